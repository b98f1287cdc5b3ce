"""The embedded engine's step forward, done by llama.cpp.

`LlamaCppRunner.forward` has `ModelRunner.forward`'s contract (decode rows in slots 0..R-1, new
prompts from their first uncached position in their slot, logits back as float32 tensors), so
the scheduler, sampler, stop strings, detokenizer and API of the embedded engine serve a GGUF
file unchanged: continuous batching, `n` choices, seeds, penalties and logprobs included. A slot
is a llama.cpp sequence id (slots.py); the step is one flat `llama_decode` batch.
"""

from __future__ import annotations

import numpy as np
import torch

from shipyard.engines.llamacpp_engine.native import NativeLlama
from shipyard.engines.llamacpp_engine.slots import SequenceSlots


class LlamaCppRunner:
    def __init__(self, native: NativeLlama, n_slots: int):
        self.native = native
        self.cache = SequenceSlots(native, n_slots)
        self.device = torch.device("cpu")  # the logits come back to host memory, where sampling runs
        self._before_close = None

    def forward(
        self,
        decode_tokens: list[int],
        decode_positions: list[int],
        prompts: list[list[int]],
        prompt_slots: list[int],
        every_position: set[int] = frozenset(),
        prompt_starts: list[int] | None = None,  # prompt tokens already in the slot (SequenceSlots.load)
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        r = len(decode_tokens)
        starts = prompt_starts or [0] * len(prompts)
        parts = [prompt[start:] for prompt, start in zip(prompts, starts)]
        tokens, positions, seqs = [decode_tokens], [decode_positions], [list(range(r))]
        wants = np.zeros(r + sum(len(p) for p in parts), dtype=np.int8)
        wants[:r] = 1
        offsets, at = [], r
        for index, (part, start, slot) in enumerate(zip(parts, starts, prompt_slots)):
            if start == 0:
                self.cache.forget(slot)  # whatever an earlier occupant left there
            tokens.append(part)
            positions.append(range(start, start + len(part)))
            seqs.append([slot] * len(part))
            offsets.append(at)
            if index in every_position:
                wants[at: at + len(part)] = 1
            else:
                wants[at + len(part) - 1] = 1
            at += len(part)
        flat = np.fromiter((t for part in tokens for t in part), dtype=np.int32, count=len(wants))
        flat_positions = np.fromiter((p for part in positions for p in part), dtype=np.int32, count=len(wants))
        flat_seqs = np.fromiter((s for part in seqs for s in part), dtype=np.int32, count=len(wants))
        logits = torch.from_numpy(self.native.decode(flat, flat_positions, flat_seqs, wants))
        for slot, (token, position) in enumerate(zip(decode_tokens, decode_positions)):
            self.cache.wrote(slot, position, (token,))
        for part, start, slot in zip(parts, starts, prompt_slots):
            self.cache.wrote(slot, start, part)
        row_of = np.cumsum(wants) - 1  # flat index → row of the returned logits
        last_rows = [int(row_of[offset + len(part) - 1]) for offset, part in zip(offsets, parts)]
        full = {index: logits[int(row_of[offsets[index]]): int(row_of[offsets[index]]) + len(parts[index])]
                for index in every_position}
        return logits[:r], logits[last_rows], full

    def on_close(self, callback) -> None:
        """Run `callback` before the context goes (the C decode loop holds it)."""
        self._before_close = callback

    def close(self) -> None:
        before, self._before_close = self._before_close, None
        if before is not None:
            before()
        self.native.close()
