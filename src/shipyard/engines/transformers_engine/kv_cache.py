"""Key/value storage in dense per-sequence slots, written by Hugging Face attention layers.

Why slots and not pages: on a CPU, a paged cache must gather each sequence's blocks into a
contiguous tensor on every step, for every layer (a copy as large as the cache read). Keeping
each running sequence in its own slot, and the running sequences packed into slots 0..R-1,
lets a decode step hand SDPA a *view* `k[:R, :, :L]`: no gather at all. A finished sequence's
hole is filled by moving the last slot into it (one sequence's worth of copying, once).

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

    def _allocate(self, layer: int, like: torch.Tensor) -> None:
        shape = (self.num_slots, like.shape[1], self.capacity, like.shape[3])
        self.keys[layer] = like.new_zeros(shape)
        self.values[layer] = like.new_zeros(shape)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot `src`'s first `length` positions to slot `dst` (compaction and forks)."""
        for store in (self.keys, self.values):
            for tensor in store:
                if tensor is not None:
                    tensor[dst, :, :length].copy_(tensor[src, :, :length])

    def bytes_per_token(self) -> int:
        total = 0
        for store in (self.keys, self.values):
            for tensor in store:
                if tensor is not None:
                    total += tensor.shape[1] * tensor.shape[3] * tensor.element_size()
        return total


class BatchCacheView:
    """What a model's attention layers see as `past_key_values` for one forward pass.

    `rows` selects the slots of the batch (a slice for the packed decode batch, an index
    tensor for prefills); `write_positions[b, j]` is where the j-th new token of row b goes.
    `update()` writes the new keys/values and returns keys/values for positions [0, kv_len),
    which the caller's 4-D attention mask restricts to each row's own valid positions.
    """

    def __init__(
        self,
        cache: SlotKVCache,
        rows: slice | torch.Tensor,
        write_positions: torch.Tensor,
        kv_len: int,
    ):
        self.cache = cache
        self.rows = rows
        self.kv_len = kv_len
        self.write_positions = write_positions
        if isinstance(rows, slice):
            slot_ids = torch.arange(rows.start, rows.stop, device=write_positions.device)
        else:
            slot_ids = rows
        self._slot_index = slot_ids.unsqueeze(1)  # [B, 1], broadcast against [B, q]

    # The subset of the transformers Cache API that decoder-only models call.
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        cache = self.cache
        if cache.keys[layer_idx] is None:
            cache._allocate(layer_idx, key_states)
        keys, values = cache.keys[layer_idx], cache.values[layer_idx]
        # keys: [S, H, T, D]; advanced indices on dims 0 and 2 put [B, q] first: [B, q, H, D]
        keys[self._slot_index, :, self.write_positions] = key_states.transpose(1, 2)
        values[self._slot_index, :, self.write_positions] = value_states.transpose(1, 2)
        if isinstance(self.rows, slice):
            return keys[self.rows, :, : self.kv_len], values[self.rows, :, : self.kv_len]
        return (
            keys[:, :, : self.kv_len].index_select(0, self.rows),
            values[:, :, : self.kv_len].index_select(0, self.rows),
        )

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    @property
    def is_compileable(self) -> bool:
        return False
