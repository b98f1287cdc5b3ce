"""Exact stop strings, matched in time linear in the generated text (Aho-Corasick).

The automaton is built once per request (`StopStrings`) and shared by its choices; each choice
keeps only its current state (`StopStringMatcher`). The state's depth is exactly the longest
suffix of the text so far that could still grow into a stop string, so that much is held back
and everything before it is safe to emit. Each character costs amortised O(1), whatever the
number or length of the stop strings, so crafted stop lists cannot slow a request (or the batch
it shares) down.
"""

from __future__ import annotations

from collections import deque


class StopStrings:
    """The trie of the stop strings with failure links; immutable once built."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.goto: list[dict[str, int]] = [{}]
        self.fail: list[int] = [0]
        self.depth: list[int] = [0]
        # The longest stop string ending at this state (itself or along its failure chain), or -1.
        self.match_len: list[int] = [-1]
        for stop in self.stops:
            self._insert(stop)
        self._link()

    def _insert(self, stop: str) -> None:
        state = 0
        for char in stop:
            nxt = self.goto[state].get(char)
            if nxt is None:
                nxt = len(self.goto)
                self.goto[state][char] = nxt
                self.goto.append({})
                self.fail.append(0)
                self.depth.append(self.depth[state] + 1)
                self.match_len.append(-1)
            state = nxt
        self.match_len[state] = len(stop)

    def _link(self) -> None:
        queue = deque(self.goto[0].values())
        while queue:
            state = queue.popleft()
            for char, child in self.goto[state].items():
                queue.append(child)
                fallback = self.fail[state]
                while fallback and char not in self.goto[fallback]:
                    fallback = self.fail[fallback]
                link = self.goto[fallback].get(char, 0)
                self.fail[child] = link if link != child else 0
                if self.match_len[child] == -1:
                    self.match_len[child] = self.match_len[self.fail[child]]

    def step(self, state: int, char: str) -> int:
        while state and char not in self.goto[state]:
            state = self.fail[state]
        return self.goto[state].get(char, 0)


class StopStringMatcher:
    """One choice's progress through the stop strings; text that may still become a stop is held."""

    def __init__(self, stops: list[str] | StopStrings):
        self._automaton = stops if isinstance(stops, StopStrings) else StopStrings(stops)
        self._state = 0
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string matched or None)."""
        automaton = self._automaton
        if not automaton.stops:
            return delta, None
        text = self._pending + delta
        state = self._state
        # Only the new characters are scanned: the held ones are already summarised by `state`.
        start = len(self._pending)
        for offset in range(len(delta)):
            state = automaton.step(state, delta[offset])
            length = automaton.match_len[state]
            if length > 0:  # the earliest-ending stop string (the longest of those ending here)
                end = start + offset + 1
                self._state, self._pending = 0, ""
                return text[: end - length], text[end - length: end]
        self._state = state
        hold = automaton.depth[state]
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold], None

    def flush(self) -> str:
        """The generation ended for another reason: held text is real output after all."""
        text, self._pending, self._state = self._pending, "", 0
        return text
