"""llama.cpp's sequences as the scheduler's slots, and what each slot's cells hold.

A slot is a llama.cpp sequence id over one unified KV store. Moving a slot relabels cells (no
copy). Each slot also remembers which token ids its cells hold from position 0, and for whom
(the request's scope: its tenant): a new prompt starts from the longest prefix any slot of the
same scope holds, relabelled into its own slot, and only the rest is prefilled. That is
llama-server's prompt cache, across slots: a chat's shared system prompt and history, or the
previous turn of a conversation, are not computed again. The last prompt token is always
computed, so the prefill yields the first output token's logits. Scopes never share: another
tenant's prefix would show in `cached_tokens` and in the time to first token.

Free slots keep their cells only until a step admits nothing (`release_free`). In one unified
store every decoding sequence's attention spans the cells in use, its own or not: 15 idle slots of
100 tokens each made a single stream's step 25% slower with flash attention, 4x without. A
request admitted meanwhile still finds what they held; the running slots' prefixes stay.
"""

from __future__ import annotations

import numpy as np

from shipyard.engines.llamacpp_engine.native import NativeLlama


class SequenceSlots:
    def __init__(self, native: NativeLlama, n_slots: int):
        self.native = native
        self._tokens = np.zeros((n_slots, native.seq_len), dtype=np.int32)  # what slot s holds: [:held[s]]
        self._held = np.zeros(n_slots, dtype=np.int64)
        self._scopes: list[str | None] = [None] * n_slots
        self._occupied = np.zeros(n_slots, dtype=bool)  # cells may be there (dropping an empty one scans the store)
        self.queries = 0  # prompt tokens looked up, and those found (vLLM's prefix-cache counters)
        self.hits = 0

    # ------------------------------------------------------------ the scheduler's cache
    def move(self, src: int, dst: int, length: int) -> None:
        self.native.copy(src, dst, length)
        self._occupied[dst] = True
        length = min(length, int(self._held[src]))
        self._tokens[dst, :length] = self._tokens[src, :length]
        self._held[dst] = length
        self._scopes[dst] = self._scopes[src]

    # ------------------------------------------------------------ the engine core's prefix pool
    def names(self, prompt_ids: list[int], scope: str = "") -> str:
        return scope

    def load(self, prompt_ids: list[int], scope: str, slot: int) -> int:
        """Put the longest prefix of `prompt_ids` that a slot of `scope` holds into `slot`
        (all but the last token); returns its length (0: the slot is emptied)."""
        self.queries += len(prompt_ids)
        prompt = np.asarray(prompt_ids[:-1], dtype=np.int32)
        n = min(len(prompt), self._tokens.shape[1])
        best, source = 0, slot
        if n:
            differs = self._tokens[:, :n] != prompt[:n]
            common = np.minimum(np.where(differs.any(axis=1), differs.argmax(axis=1), n), self._held)
            for s in np.argsort(-common, kind="stable"):
                if common[s] == 0:
                    break
                if self._scopes[s] == scope:
                    best, source = int(common[s]), int(s)
                    break
        if best == 0:
            self.native.drop(slot)
        elif source == slot:
            self.native.truncate(slot, best)
        else:
            self.native.copy(source, slot, best)
            self._tokens[slot, :best] = self._tokens[source, :best]
        self._held[slot] = best
        self._scopes[slot] = scope
        self._occupied[slot] = best > 0
        self.hits += best
        return best

    def store(self, scope: str, slot: int) -> None:
        self._scopes[slot] = scope

    # ------------------------------------------------------------ what the forward wrote
    def forget(self, slot: int) -> None:
        """The slot's cells are gone (or unknown): nothing may be reused from them."""
        self.native.drop(slot)
        self._held[slot] = 0
        self._scopes[slot] = None
        self._occupied[slot] = False

    def holding(self) -> list[int]:
        """The slots whose cells may hold something."""
        return np.flatnonzero(self._occupied).tolist()

    def release_free(self, first_free: int) -> None:
        """Drop the cells of the slots from `first_free` on (no sequence runs there)."""
        for slot in np.flatnonzero(self._occupied[first_free:]) + first_free:
            self.forget(int(slot))

    def wrote(self, slot: int, position: int, tokens) -> None:
        """A decode put `tokens` into `slot` from `position` on."""
        held = int(self._held[slot])
        if position > held:  # a gap this record never saw: what it holds stays true
            return
        self._occupied[slot] = True
        end = min(position + len(tokens), self._tokens.shape[1])
        self._tokens[slot, position:end] = tokens[: end - position]
        self._held[slot] = end
