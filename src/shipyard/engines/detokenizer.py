"""Token ids → text, one token at a time, and exact stop-string handling.

Decoding a growing list of ids one id at a time is wrong for byte-level BPE (one character can
span several tokens) and for SentencePiece (a token's leading space depends on what precedes
it). The offsets technique used by TGI and vLLM decodes a short window twice and emits only the
stable difference; an incomplete UTF-8 sequence ("\ufffd" at the end) is held until complete.
"""

from __future__ import annotations

from typing import Any

# Prompt tokens decoded as context for the first generated token (SentencePiece spacing).
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """Append one id; return the text that became stable because of it (may be "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """At the end of generation: whatever is still held (e.g. a dangling partial character)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopStringMatcher:
    """Finds the first stop string in the generated text, never letting any of it out.

    Text that could still grow into a stop string (a suffix equal to a stop's prefix) is held
    back until it either completes the stop (then it is dropped with everything after it) or
    diverges (then it is released).
    """

    def __init__(self, stops: list[str]):
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string matched or None)."""
        if not self._stops:
            return delta, None
        text = self._pending + delta
        first_index, first_stop = -1, None
        for stop in self._stops:
            index = text.find(stop)
            if index != -1 and (first_index == -1 or index < first_index):
                first_index, first_stop = index, stop
        if first_stop is not None:
            self._pending = ""
            return text[:first_index], first_stop
        hold = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:k]):
                    hold = k
                    break
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], None

    def flush(self) -> str:
        """The generation ended for another reason: held text is real output after all."""
        text, self._pending = self._pending, ""
        return text


class TokenTextCache:
    """Per-token text and UTF-8 bytes for logprobs, decoded once per vocabulary entry."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        entry = self._cache.get(token_id)
        if entry is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False)
            entry = (text, list(text.encode("utf-8")))
            self._cache[token_id] = entry
        return entry
