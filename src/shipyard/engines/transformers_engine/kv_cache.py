"""Key/value storage in dense per-sequence slots, written by Hugging Face attention layers.

Why slots and not pages: on a CPU, a paged cache must gather each sequence's blocks into a
contiguous tensor on every step, for every layer (a copy as large as the cache read). Keeping
each running sequence in its own slot, and the running sequences packed into slots 0..R-1,
lets a decode step hand SDPA a *view* `k[:R, :, :L]`: no gather at all. A finished sequence's
hole is filled by moving the last slot into it (one sequence's worth of copying, once).
`model_runner.py` writes new keys/values in and reads them back through these tensors.

The time axis grows by doubling up to `max_model_len`, so memory follows the longest running
sequence rather than the worst case.
"""

from __future__ import annotations

import torch


class SlotKVCache:
    def __init__(self, num_layers: int, num_slots: int, max_model_len: int, initial_len: int = 256):
        self.num_layers = num_layers
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.capacity = min(initial_len, max_model_len)
        # Allocated lazily on the first write of each layer: the attention layer knows the
        # number of KV heads, the head size and the dtype better than any config field.
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def ensure_capacity(self, length: int) -> None:
        """Grow the time axis so that positions [0, length) fit."""
        if length <= self.capacity:
            return
        new_capacity = self.capacity
        while new_capacity < length:
            new_capacity *= 2
        new_capacity = min(new_capacity, self.max_model_len)
        for layer in range(self.num_layers):
            for store in (self.keys, self.values):
                old = store[layer]
                if old is None:
                    continue
                grown = old.new_zeros(old.shape[0], old.shape[1], new_capacity, old.shape[3])
                grown[:, :, : self.capacity].copy_(old)
                store[layer] = grown
        self.capacity = new_capacity

    def allocate_layer(self, layer: int, like: torch.Tensor) -> None:
        shape = (self.num_slots, like.shape[1], self.capacity, like.shape[3])
        self.keys[layer] = like.new_zeros(shape)
        self.values[layer] = like.new_zeros(shape)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions to slot `dst` (compaction and forks)."""
        for store in (self.keys, self.values):
            for tensor in store:
                if tensor is not None:
                    tensor[dst, :, :length].copy_(tensor[src, :, :length])
