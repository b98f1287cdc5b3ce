"""Prefill and decode forwards of a Hugging Face causal LM over the slot cache.

The model's own modules do the maths; we hand them explicit `position_ids`, a 4-D boolean
attention mask (each row sees only its own valid positions) and a `BatchCacheView` as
`past_key_values`, which every decoder-only architecture in transformers v5 calls `update()` on.
"""

from __future__ import annotations

import torch

from shipyard.engines.transformers_engine.kv_cache import BatchCacheView, SlotKVCache


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cache: SlotKVCache, device: torch.device):
        self.model = model
        self.cache = cache
        self.device = device

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        """Run whole prompts (left-padded into one batch) into their slots.

        Returns the float32 logits of each prompt's last position, shape [N, vocab].
        Left padding puts every prompt's last token in the last column, so the model
        computes logits for that column only (`logits_to_keep=1`).
        """
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        self.cache.ensure_capacity(width)
        n = len(prompts)
        input_ids = torch.zeros((n, width), dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        write_positions = torch.empty((n, width), dtype=torch.long)
        mask = torch.zeros((n, 1, width, width), dtype=torch.bool)
        for row, (prompt, length) in enumerate(zip(prompts, lengths)):
            pad = width - length
            input_ids[row, pad:] = torch.tensor(prompt, dtype=torch.long)
            positions = torch.arange(length)
            position_ids[row, pad:] = positions
            write_positions[row, pad:] = positions
            # Pad columns write to distinct scratch positions past the prompt (< width); generated
            # tokens overwrite them later, and no mask ever lets a real query see them.
            write_positions[row, :pad] = torch.arange(length, width)
            mask[row, 0, pad:, :length] = torch.tril(torch.ones(length, length, dtype=torch.bool))
            mask[row, 0, :pad, 0] = True  # a pad query must see something, or SDPA yields NaN
        view = BatchCacheView(
            self.cache,
            torch.tensor(slots, dtype=torch.long, device=self.device),
            write_positions.to(self.device),
            kv_len=width,
        )
        out = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=position_ids.to(self.device),
            attention_mask=mask.to(self.device),
            past_key_values=view,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def decode(self, last_tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each running sequence; row b is slot b (the running set is packed).

        `positions[b]` is where row b's fed token sits; it attends to positions [0, positions[b]].
        """
        batch = len(last_tokens)
        kv_len = max(positions) + 1
        self.cache.ensure_capacity(kv_len)
        pos = torch.tensor(positions, dtype=torch.long).unsqueeze(1)  # [B, 1]
        mask = (torch.arange(kv_len).unsqueeze(0) <= pos).view(batch, 1, 1, kv_len)
        view = BatchCacheView(self.cache, slice(0, batch), pos.to(self.device), kv_len=kv_len)
        out = self.model(
            input_ids=torch.tensor(last_tokens, dtype=torch.long, device=self.device).unsqueeze(1),
            position_ids=pos.to(self.device),
            attention_mask=mask.to(self.device),
            past_key_values=view,
            use_cache=True,
        )
        return out.logits[:, -1, :].float()
