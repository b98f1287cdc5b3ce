"""The embedded engine's step forward, done by llama.cpp.

`LlamaCppRunner.forward` has `ModelRunner.forward`'s contract (decode rows in slots 0..R-1, new
prompts from position 0 of their slot, logits back as float32 tensors), so the scheduler,
sampler, stop strings, detokenizer and API of the embedded engine serve a GGUF file unchanged:
continuous batching, `n` choices, seeds, penalties and logprobs included. A slot is a llama.cpp
sequence id; the step is one flat `llama_decode` batch.
"""

from __future__ import annotations

import numpy as np
import torch

from shipyard.engines.llamacpp_engine.native import NativeLlama


class SequenceSlots:
    """What the scheduler sees as the KV cache: moving a slot relabels llama.cpp's cells."""

    def __init__(self, native: NativeLlama):
        self.native = native

    def move(self, src: int, dst: int, length: int) -> None:
        self.native.copy(src, dst, length)


class LlamaCppRunner:
    def __init__(self, native: NativeLlama):
        self.native = native
        self.cache = SequenceSlots(native)
        self.device = torch.device("cpu")  # the logits come back to host memory, where sampling runs

    def forward(
        self,
        decode_tokens: list[int],
        decode_positions: list[int],
        prompts: list[list[int]],
        prompt_slots: list[int],
        every_position: set[int] = frozenset(),
        prompt_starts: list[int] | None = None,  # always 0: llama.cpp's cache has no prefix pool here
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        r = len(decode_tokens)
        tokens, positions, seqs = [decode_tokens], [decode_positions], [list(range(r))]
        wants = np.zeros(r + sum(len(p) for p in prompts), dtype=np.int8)
        wants[:r] = 1
        starts, at = [], r
        for index, (prompt, slot) in enumerate(zip(prompts, prompt_slots)):
            self.native.drop(slot)  # whatever an earlier occupant left there
            tokens.append(prompt)
            positions.append(range(len(prompt)))
            seqs.append([slot] * len(prompt))
            starts.append(at)
            if index in every_position:
                wants[at: at + len(prompt)] = 1
            else:
                wants[at + len(prompt) - 1] = 1
            at += len(prompt)
        flat = np.fromiter((t for part in tokens for t in part), dtype=np.int32, count=len(wants))
        flat_positions = np.fromiter((p for part in positions for p in part), dtype=np.int32, count=len(wants))
        flat_seqs = np.fromiter((s for part in seqs for s in part), dtype=np.int32, count=len(wants))
        logits = torch.from_numpy(self.native.decode(flat, flat_positions, flat_seqs, wants))
        row_of = np.cumsum(wants) - 1  # flat index → row of the returned logits
        last_rows = [int(row_of[start + len(prompt) - 1]) for start, prompt in zip(starts, prompts)]
        full = {index: logits[int(row_of[starts[index]]): int(row_of[starts[index]]) + len(prompts[index])]
                for index in every_position}
        return logits[:r], logits[last_rows], full

    def close(self) -> None:
        self.native.close()
