"""One forward pass per step, prefills and decodes together, over the slot cache.

The step's tokens are laid out flat, as one batch row: first one token for each decoding
sequence (slots 0..R-1, in order), then every new prompt in full. The model's own modules do
the maths; attention is ours (`slot_attention`, registered with transformers'
`AttentionInterface`): decode queries read their slots through one view of the cache, each new
prompt attends causally within its own slot. Nothing is padded, and a step that admits new
requests costs one forward, not two.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from shipyard.engines.transformers_engine.kv_cache import SlotKVCache

ATTENTION_NAME = "shipyard_slots"


@dataclass
class FlatBatch:
    cache: SlotKVCache
    num_decode: int  # tokens 0..R-1 are decode tokens of slots 0..R-1
    decode_kv_len: int
    decode_mask: torch.Tensor | None  # [R, 1, 1, decode_kv_len], True = attend
    prefills: list[tuple[int, int, int, int]]  # (slot, first flat index, first position computed, prompt length)
    write_slots: torch.Tensor  # [T]
    write_positions: torch.Tensor  # [T]


_active = threading.local()  # the batch of the forward running on this thread


class _CacheWriter:
    """What the model sees as `past_key_values`: every layer hands over its new keys/values here."""

    def __init__(self, batch: FlatBatch):
        self.batch = batch

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        batch, cache = self.batch, self.batch.cache
        if cache.keys[layer_idx] is None:
            cache.allocate_layer(layer_idx, key_states)
        # key_states: [1, H_kv, T, D] -> [T, H_kv, D] at (slot, position) pairs
        cache.keys[layer_idx][batch.write_slots, :, batch.write_positions] = key_states[0].transpose(0, 1)
        cache.values[layer_idx][batch.write_slots, :, batch.write_positions] = value_states[0].transpose(0, 1)
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    @property
    def is_compileable(self) -> bool:
        return False


def slot_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, T, D] in the flat layout → output [1, T, H, D] (what HF attention returns)."""
    batch: FlatBatch = _active.batch
    keys = batch.cache.keys[module.layer_idx]
    values = batch.cache.values[module.layer_idx]
    heads, head_dim = query.shape[1], query.shape[3]
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    outputs = []
    if batch.num_decode:
        r, length = batch.num_decode, batch.decode_kv_len
        # [R, H_kv, groups, D]: the query heads sharing a KV head ride along the query-length axis,
        # so grouped-query attention needs no copy of the keys (the mask broadcasts over groups).
        q = query[0, :, :r].transpose(0, 1).reshape(r, kv_heads, groups, head_dim)
        out = F.scaled_dot_product_attention(q, keys[:r, :, :length], values[:r, :, :length],
                                             attn_mask=batch.decode_mask, scale=scaling)
        outputs.append(out.reshape(r, heads, head_dim))
    for slot, start, cached, length in batch.prefills:
        q = query[:, :, start : start + length - cached]
        k = keys[slot : slot + 1, :, :length]
        v = values[slot : slot + 1, :, :length]
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if cached:  # queries for positions cached..length-1 see every key up to their own position
            mask = torch.arange(length, device=q.device) <= torch.arange(cached, length, device=q.device)[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs, dim=0).unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, slot_attention)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: SlotKVCache, device: torch.device):
        self.model = model
        self.cache = cache
        self.device = device

    def forward(
        self,
        decode_tokens: list[int],
        decode_positions: list[int],
        prompts: list[list[int]],
        prompt_slots: list[int],
        every_position: set[int] = frozenset(),
        prompt_starts: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        """Decode row b (slot b) feeds `decode_tokens[b]` at `decode_positions[b]`; each prompt is
        written from position `prompt_starts[i]` of its slot (0 unless its prefix is already there,
        copied from the prefix cache). Returns float32 logits on the CPU: [R, V] for the
        decode rows, [N, V] for the last position of each prompt, and [L, V] (every position) for
        the prompts whose index is in `every_position` (prompt scoring)."""
        r = len(decode_tokens)
        tokens = list(decode_tokens)
        positions = list(decode_positions)
        slots = list(range(r))
        prefills, last_indices = [], []
        for prompt, slot, cached in zip(prompts, prompt_slots, prompt_starts or [0] * len(prompts)):
            prefills.append((slot, len(tokens), cached, len(prompt)))
            tokens += prompt[cached:]
            positions += range(cached, len(prompt))
            slots += [slot] * (len(prompt) - cached)
            last_indices.append(len(tokens) - 1)
        longest = max([p + 1 for p in decode_positions] + [len(p) for p in prompts])
        self.cache.ensure_capacity(longest)

        device = self.device
        position_tensor = torch.tensor(positions, dtype=torch.long)
        decode_mask, decode_len = None, 0
        if r:
            decode_len = max(decode_positions) + 1
            decode_mask = (torch.arange(decode_len).unsqueeze(0) <= position_tensor[:r].unsqueeze(1)).view(
                r, 1, 1, decode_len).to(device)
        _active.batch = FlatBatch(
            cache=self.cache,
            num_decode=r,
            decode_kv_len=decode_len,
            decode_mask=decode_mask,
            prefills=prefills,
            write_slots=torch.tensor(slots, dtype=torch.long, device=device),
            write_positions=position_tensor.to(device),
        )
        kept = list(range(r)) + last_indices
        spans: dict[int, tuple[int, int]] = {}
        for index in sorted(every_position):  # scored prompts are always computed whole
            _, start, _, length = prefills[index]
            spans[index] = (len(kept), length)
            kept += range(start, start + length)
        keep = torch.tensor(kept, dtype=torch.long, device=device)
        try:
            out = self.model(
                input_ids=torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(0),
                position_ids=position_tensor.to(device).unsqueeze(0),
                past_key_values=_CacheWriter(_active.batch),
                use_cache=True,
                logits_to_keep=keep,
            )
        finally:
            _active.batch = None
        logits = out.logits[0].float()  # stays on the device: the sampler draws there
        n = len(prompts)
        full = {index: logits[at: at + length] for index, (at, length) in spans.items()}
        return logits[:r], logits[r: r + n], full

    def close(self) -> None:
        """Nothing to free by hand: the cache's tensors go with the engine."""
