"""Prefix-affinity routing: a request goes to the replica most likely to hold its prompt's prefix
in its KV cache, unless that replica is busier than the least busy one by more than a slack.

Like SGLang's cache-aware router, in a simpler form: each replica keeps the chained hashes of the
prompt blocks (64 characters each) it was recently sent, bounded and least-recently-used. A new
prompt's blocks are hashed the same way, and the replica holding the longest run of them from the
start wins. A prompt shorter than one block, or matching nowhere, is left to the balancer. The
replica that serves it then remembers its blocks. Requests that share a system prompt therefore
land together, and different prefixes still spread across replicas.

The chain starts from the request's scope (its tenant), as the engines' own prefix blocks do:
routing by another tenant's prefixes would reveal them through latency, and would not help,
since the engines keep each tenant's blocks apart.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from shipyard.engines.base import GenerationRequest
from shipyard.routing.replica import Replica

BLOCK_CHARS = 64


def prefix_blocks(request: GenerationRequest, max_blocks: int = 256) -> list[bytes]:
    """Chained hashes of the prompt's full blocks, from its start."""
    prompt = request.prompt
    if request.prompt_ids is not None or prompt.token_ids is not None:
        ids = request.prompt_ids if request.prompt_ids is not None else prompt.token_ids
        text = ",".join(map(str, ids))
    elif prompt.messages is not None:
        text = "".join(f"\x1e{m.role}\x1f{m.content}" for m in prompt.messages)
    else:
        text = prompt.text or ""
    blocks = []
    parent = hashlib.blake2b(request.scope.encode(), digest_size=12).digest() if request.scope else b""
    for start in range(0, min(len(text) // BLOCK_CHARS, max_blocks) * BLOCK_CHARS, BLOCK_CHARS):
        parent = hashlib.blake2b(parent + text[start: start + BLOCK_CHARS].encode(), digest_size=12).digest()
        blocks.append(parent)
    return blocks


class PrefixAffinity:
    def __init__(self, slack: int = 4, max_blocks_per_replica: int = 100_000):
        self.slack = slack
        self.max_blocks = max_blocks_per_replica
        self._seen: dict[str, OrderedDict[bytes, None]] = {}
        self.routed = 0  # requests sent where their prefix was
        self.shed = 0  # requests whose prefix replica was too busy

    def pick(self, blocks: list[bytes], candidates: list[Replica]) -> Replica | None:
        """The replica holding the longest run of these prompt blocks (`prefix_blocks`), or None
        (the balancer's turn)."""
        if not blocks or len(candidates) < 2:
            return None
        runs = {}
        for replica in candidates:
            seen = self._seen.get(replica.name)
            run = 0
            if seen:
                for block in blocks:
                    if block not in seen:
                        break
                    run += 1
            runs[replica.name] = run
        best_run = max(runs.values())
        if best_run == 0:
            return None
        # Several hold it (a hot prefix has spread): the least busy of them.
        best = min((r for r in candidates if runs[r.name] == best_run), key=lambda r: r.load())
        if best.load() > min(r.load() for r in candidates) + self.slack:
            self.shed += 1
            return None
        self.routed += 1
        return best

    def remember(self, blocks: list[bytes], replica: Replica) -> None:
        seen = self._seen.setdefault(replica.name, OrderedDict())
        for block in blocks:
            seen[block] = None
            seen.move_to_end(block)
        while len(seen) > self.max_blocks:
            seen.popitem(last=False)

    def forget(self, replica_name: str) -> None:
        self._seen.pop(replica_name, None)
