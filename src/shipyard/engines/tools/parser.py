"""Tool calls read out of an answer as it streams, in OpenAI's delta shape.

Fed the answer's text piece by piece (after stop strings), the parser returns the text that is
ordinary content and the tool-call deltas found so far: a call's first delta carries its id and
name, later ones pieces of its JSON arguments, streamed as the model writes them (as vLLM's
parsers do). Text that might still turn into a call marker is held back, like a stop string.
Text that opens like a call but is not one is given back as content.
"""

from __future__ import annotations

import json

from shipyard.engines.structured import ToolCallDelta, new_call_id
from shipyard.engines.tools.formats import ToolFormat

_ARGUMENT_KEYS = ("arguments", "parameters")


class _CallScanner:
    """One call's JSON object, a character at a time: where its name and its arguments are."""

    def __init__(self):
        self.chars: list[str] = []
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.string_start = 0
        self.expect = "key"  # at the object's top level: key | colon | value | in_value | comma
        self.key: str | None = None
        self.value_start = 0
        self.value_kind = ""
        self.name: str | None = None
        self.args_start: int | None = None
        self.args_end: int | None = None
        self.args_kind = ""
        self.done = False
        self.broken = False  # not a call after all

    def feed(self, text: str) -> int:
        """Characters consumed (the object may end before the text does)."""
        for i, char in enumerate(text):
            self._char(char)
            if self.done or self.broken:
                return i + 1
        return len(text)

    def _char(self, c: str) -> None:
        pos = len(self.chars)
        self.chars.append(c)
        if pos == 0:
            if c != "{":
                self.broken = True
            self.depth = 1
            return
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif c == "\\":
                self.escaped = True
            elif c == '"':
                self.in_string = False
                if self.depth == 1:
                    self._top_string(pos)
            return
        if c == '"':
            self.in_string = True
            self.string_start = pos
            if self.depth == 1 and self.expect == "value":
                self._value(pos, '"')
            return
        if c in "{[":
            if self.depth == 1 and self.expect == "value":
                self._value(pos, c)
            self.depth += 1
            return
        if c in "}]":
            self.depth -= 1
            if self.depth == 1 and self.expect == "in_value":
                self._value_end(pos + 1)
            elif self.depth == 0:
                if self.expect == "in_value":
                    self._value_end(pos)
                self.done = True
            return
        if self.depth != 1:
            return
        if c == ":" and self.expect == "colon":
            self.expect = "value"
        elif c == "," and self.expect in ("comma", "in_value"):
            if self.expect == "in_value":
                self._value_end(pos)
            self.expect = "key"
        elif not c.isspace() and self.expect == "value":
            self._value(pos, "primitive")
        elif not c.isspace() and self.expect in ("key", "colon", "comma"):
            self.broken = True

    def _top_string(self, end: int) -> None:
        raw = "".join(self.chars[self.string_start: end + 1])
        if self.expect == "key":
            self.key = _decode(raw)
            self.expect = "colon"
        elif self.expect == "in_value" and self.value_kind == '"':
            if self.key == "name":
                self.name = _decode(raw)
            self._value_end(end + 1)

    def _value(self, pos: int, kind: str) -> None:
        self.expect, self.value_start, self.value_kind = "in_value", pos, kind
        if self.key in _ARGUMENT_KEYS and self.args_start is None:
            self.args_start, self.args_kind = pos, kind

    def _value_end(self, end: int) -> None:
        if self.value_start == self.args_start and self.args_end is None:
            self.args_end = end
        self.expect = "comma"

    def arguments_so_far(self, sent: int = 0) -> str:
        """The arguments' text that can be sent now, from character `sent` on (objects and arrays
        stream, and only the new part is joined; strings and numbers are sent whole, once they end)."""
        if self.args_start is None:
            return ""
        if self.args_kind in "{[":
            return "".join(self.chars[self.args_start + sent: self.args_end or len(self.chars)])
        if self.args_end is None:
            return ""
        text = "".join(self.chars[self.args_start: self.args_end]).strip()
        if self.args_kind == '"':  # arguments written as a JSON string of JSON
            decoded = _decode(text)
            return decoded if isinstance(decoded, str) else text
        return text

    @property
    def text(self) -> str:
        return "".join(self.chars)


def _decode(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip('"')


class ToolCallParser:
    def __init__(self, fmt: ToolFormat, single: bool = False, call_id=new_call_id):
        self.fmt = fmt
        self.single = single  # parallel_tool_calls false: calls after the first are dropped
        self._new_id = call_id
        self._pending = ""  # text not yet decided
        self._state = "start" if fmt.bare_json else "text"
        self._scanner: _CallScanner | None = None
        self._opening = ""  # the marker text that opened the current calls (given back if they are not)
        self._index = -1
        self._announced = False
        self._sent = 0  # argument characters sent for the current call
        self.calls = 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        self._pending += text
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while self._pending:
            if not self._step(content, deltas):
                break
        return "".join(content), deltas

    def flush(self) -> tuple[str, list[ToolCallDelta]]:
        """The answer ended: held text is content; a call cut short sends what it has."""
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        if self._state == "call" and self._scanner is not None:
            if self._announced:
                self._emit_arguments(deltas, final=True)
            # a call cut off before its name is dropped: it was never content
        elif self._state in ("text", "start"):
            content.append(self._pending)
        self._pending = ""
        return "".join(content), deltas

    # ------------------------------------------------------------ states
    def _step(self, content: list[str], deltas: list[ToolCallDelta]) -> bool:
        """One move; False when more text is needed."""
        state = self._state
        if state == "start":
            stripped = self._pending.lstrip()
            if not stripped:
                return False
            if stripped.startswith("{"):
                self._opening, self._pending, self._state = self._pending[: len(self._pending) - len(stripped)], \
                    stripped, "call"
                self._scanner = None
                return True
            self._state = "text"
            return True
        if state == "text":
            start = self.fmt.start
            at = self._pending.find(start)
            if at < 0:
                keep = _partial_suffix(self._pending, start)
                content.append(self._pending[: len(self._pending) - keep])
                self._pending = self._pending[len(self._pending) - keep:]
                return False
            content.append(self._pending[:at])
            self._opening = start
            self._pending = self._pending[at + len(start):]
            self._state = "open"
            return True
        if state == "open":
            stripped = self._pending.lstrip()
            if not stripped:
                return False
            if self.fmt.list_form and stripped.startswith("["):
                self._opening += self._pending[: len(self._pending) - len(stripped) + 1]
                self._pending = stripped[1:]
                return True
            if stripped.startswith("{"):
                self._opening += self._pending[: len(self._pending) - len(stripped)]
                self._pending, self._state, self._scanner = stripped, "call", None
                return True
            content.append(self._opening)  # a marker without a call: plain text after all
            self._opening, self._state = "", "text"
            return True
        if state == "call":
            return self._call(content, deltas)
        if state == "between":
            return self._between()
        if state == "ignored":  # after the one call that was wanted
            self._pending = ""
            return False
        return False

    def _call(self, content: list[str], deltas: list[ToolCallDelta]) -> bool:
        if self._scanner is None:
            self._scanner = _CallScanner()
            self._announced, self._sent = False, 0
        scanner = self._scanner
        used = scanner.feed(self._pending)
        self._pending = self._pending[used:]
        if scanner.broken:
            content.append(self._opening + scanner.text)
            self._opening, self._state, self._scanner = "", "text", None
            return True
        if scanner.name is not None and not self._announced:
            if self.single and self.calls >= 1:
                self._state = "ignored"
                return True
            self._index += 1
            self.calls += 1
            self._announced = True
            deltas.append(ToolCallDelta(self._index, id=self._new_id(), name=scanner.name, arguments=""))
        if self._announced:
            self._emit_arguments(deltas, final=scanner.done)
        if scanner.done:
            if not self._announced:  # an object without a name is not a call
                content.append(self._opening + scanner.text)
            self._scanner, self._opening, self._state = None, "", "between"
            return True
        return False

    def _emit_arguments(self, deltas: list[ToolCallDelta], final: bool) -> None:
        scanner = self._scanner
        if final and scanner.args_start is None:
            piece = "{}"[self._sent:]
        elif scanner.args_kind in "{[":
            piece = scanner.arguments_so_far(self._sent)
        else:  # sent whole when it ends
            piece = scanner.arguments_so_far()[self._sent:]
        if piece:
            self._sent += len(piece)
            if deltas and deltas[-1].index == self._index:
                deltas[-1].arguments += piece
            else:
                deltas.append(ToolCallDelta(self._index, arguments=piece))

    def _between(self) -> bool:
        """After a call: its end marker, separators, and perhaps another call."""
        fmt = self.fmt
        stripped = self._pending.lstrip()
        if not stripped:
            self._pending = ""
            return False
        for token in (fmt.end, fmt.separator.strip(), "]"):
            if token and stripped.startswith(token):
                self._pending = stripped[len(token):]
                return True
        if stripped.startswith(fmt.start):
            self._pending, self._opening, self._state = stripped[len(fmt.start):], fmt.start, "open"
            return True
        if stripped.startswith("{") and fmt.name != "hermes":
            self._pending, self._state, self._opening = stripped, "call", ""
            return True
        if any(t and t.startswith(stripped) for t in (fmt.end, fmt.start)):
            return False  # perhaps a marker, still arriving
        self._pending, self._state = stripped, "text"
        return True


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
