"""KV prefix sharing: prompts that start alike reuse the keys and values already computed.

Prompts are cut into full blocks of `block_size` tokens, and each block is named by a hash
chained through every block before it (vLLM's scheme): equal names mean equal token prefixes,
so equal keys and values. Blocks live in a pool of their own, bounded by the configured memory,
with least-recently-used eviction. A new prompt looks up its longest run of known blocks and has
them copied into its slot: one gather per layer, far cheaper than recomputing them. Then only
the rest of the prompt is prefilled. Its own new full blocks are copied into the pool after the
step. The last prompt token is never taken from the pool, so a prefill always computes at
least one position and yields the logits of the first output token.

Blocks are partitioned by a salt (the tenant, vLLM's `cache_salt`): the chain starts from the
salt's hash, so one tenant's prompts never hit another's blocks. Otherwise `cached_tokens` (and
the time to first token) would tell tenant B which prefixes tenant A sent.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from shipyard.engines.transformers_engine.kv_cache import SlotKVCache


class PrefixCache:
    def __init__(self, cache: SlotKVCache, max_bytes: int, block_size: int = 16):
        self.cache = cache
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.max_blocks = 0  # known once the slot cache knows its heads, head size and dtype
        self.blocks: OrderedDict[bytes, int] = OrderedDict()  # name → pool index, least recent first
        self.free: list[int] = []
        self.keys: list[torch.Tensor] = []  # per layer: [max_blocks, H_kv, block_size, D]
        self.values: list[torch.Tensor] = []
        # vLLM's counters, in tokens: prompt tokens looked up, and those found
        self.queries = 0
        self.hits = 0
        self.evictions = 0

    def names(self, prompt_ids: list[int], salt: str = "") -> list[bytes]:
        """Chained names of the prompt's full blocks, all but the last token's, within `salt`'s
        partition."""
        size = self.block_size
        names = []
        parent = hashlib.blake2b(salt.encode(), digest_size=16).digest() if salt else b""
        for start in range(0, (len(prompt_ids) - 1) // size * size, size):
            block = prompt_ids[start: start + size]
            parent = hashlib.blake2b(parent + b"".join(t.to_bytes(4, "little") for t in block),
                                     digest_size=16).digest()
            names.append(parent)
        return names

    def load(self, prompt_ids: list[int], names: list[bytes], slot: int) -> int:
        """Copy the prompt's longest run of known blocks (`names`, from `self.names`) into `slot`;
        returns the tokens copied."""
        self.queries += len(prompt_ids)
        found: list[int] = []
        for name in names:
            index = self.blocks.get(name)
            if index is None:
                break
            found.append(index)
        if not found:
            return 0
        for name in reversed(names[: len(found)]):  # a chain's root is evicted last
            self.blocks.move_to_end(name)
        tokens = len(found) * self.block_size
        self.cache.ensure_capacity(len(prompt_ids))
        pool_index = torch.tensor(found, device=self.keys[0].device)
        for pool, slots in ((self.keys, self.cache.keys), (self.values, self.cache.values)):
            for layer, blocks in enumerate(pool):
                heads, dim = blocks.shape[1], blocks.shape[3]
                # [n, H, B, D] → [H, n·B, D]: the slot's first n blocks, in order
                slots[layer][slot, :, :tokens] = blocks[pool_index].transpose(0, 1).reshape(heads, tokens, dim)
        self.hits += tokens
        return tokens

    def store(self, names: list[bytes], slot: int) -> None:
        """After the prompt's prefill: keep its full blocks that the pool does not hold yet."""
        if self.max_bytes <= 0:
            return
        new = [(position, name) for position, name in enumerate(names) if name not in self.blocks]
        if not new or not self._allocate():
            return
        new = new[: self.max_blocks]  # a chain is only useful from its root
        targets = [self._take_block() for _ in new]
        for (_, name), index in zip(new, targets):
            self.blocks[name] = index
        positions = torch.tensor([p for p, _ in new], device=self.keys[0].device)
        pool_index = torch.tensor(targets, device=self.keys[0].device)
        span = len(names) * self.block_size
        for pool, slots in ((self.keys, self.cache.keys), (self.values, self.cache.values)):
            for layer, blocks in enumerate(pool):
                heads, dim = blocks.shape[1], blocks.shape[3]
                as_blocks = slots[layer][slot, :, :span].reshape(heads, len(names), self.block_size, dim)
                blocks[pool_index] = as_blocks[:, positions].transpose(0, 1)

    def _take_block(self) -> int:
        if self.free:
            return self.free.pop()
        _, index = self.blocks.popitem(last=False)
        self.evictions += 1
        return index

    def _allocate(self) -> bool:
        """Size the pool from the memory bound once the slot cache has its shapes."""
        if self.keys:
            return True
        first = self.cache.keys[0]
        if first is None:
            return False
        per_block = sum(2 * k.shape[1] * self.block_size * k.shape[3] * k.element_size()
                        for k in self.cache.keys if k is not None)
        self.max_blocks = self.max_bytes // per_block
        if self.max_blocks == 0:
            self.max_bytes = 0
            return False
        for k in self.cache.keys:
            shape = (self.max_blocks, k.shape[1], self.block_size, k.shape[3])
            self.keys.append(k.new_zeros(shape))
            self.values.append(k.new_zeros(shape))
        self.free = list(range(self.max_blocks - 1, -1, -1))
        return True

    @property
    def blocks_used(self) -> int:
        return len(self.blocks)
