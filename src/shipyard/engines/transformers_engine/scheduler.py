"""Who runs next: a bounded FIFO of waiting requests and a packed set of running sequences.

A request (all its `n` choices) is admitted when it has `n` free slots and fits the step's
prefill budget; its choices then occupy consecutive slots. Running sequences always fill
slots 0..R-1 in order, so a decode step reads the cache as one view. Finished or aborted
sequences leave at once and the last slot moves into the hole.
"""

from __future__ import annotations

from collections import deque

from shipyard.engines.transformers_engine.kv_cache import SlotKVCache
from shipyard.engines.transformers_engine.sequence import Sequence, SequenceGroup, SequenceStatus


class Scheduler:
    def __init__(self, cache: SlotKVCache, max_num_seqs: int, max_prefill_tokens: int):
        self.cache = cache
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[Sequence] = []  # running[i].slot == i
        self.groups: dict[str, SequenceGroup] = {}

    def add(self, group: SequenceGroup) -> None:
        self.waiting.append(group)
        self.groups[group.request_id] = group

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def admit(self) -> list[SequenceGroup]:
        """Move waiting requests into free slots, oldest first, within the prefill budget."""
        admitted: list[SequenceGroup] = []
        budget = self.max_prefill_tokens
        while self.waiting:
            group = self.waiting[0]
            n = len(group.sequences)
            if len(self.running) + n > self.max_num_seqs:
                break
            # One prompt larger than the budget still runs alone, or it would never run.
            if admitted and len(group.prompt_ids) > budget:
                break
            self.waiting.popleft()
            budget -= len(group.prompt_ids)
            for seq in group.sequences:
                seq.slot = len(self.running)
                seq.status = SequenceStatus.RUNNING
                self.running.append(seq)
            admitted.append(group)
        return admitted

    def remove_finished(self, finished: list[Sequence]) -> None:
        """Free the slots of finished sequences, keeping the running set packed.

        Highest slot first: when slot i is freed, every finished sequence above it is gone,
        so the one moved into the hole is still running.
        """
        for seq in sorted(finished, key=lambda s: s.slot, reverse=True):
            last = self.running.pop()
            if last is not seq:
                self.cache.move(last.slot, seq.slot, last.length)
                last.slot = seq.slot
                self.running[seq.slot] = last
            seq.slot = -1

    def abort(self, request_id: str) -> SequenceGroup | None:
        """Take a request out wherever it is; its running sequences leave their slots."""
        group = self.groups.get(request_id)
        if group is None:
            return None
        if group in self.waiting:
            self.waiting.remove(group)
        running = [s for s in group.sequences if s.status is SequenceStatus.RUNNING]
        self.remove_finished(running)
        for seq in group.sequences:
            if seq.status is not SequenceStatus.FINISHED:
                seq.status = SequenceStatus.FINISHED
                seq.finish_reason = "abort"
        return group

    def reset(self) -> None:
        """Drop every request (after a failed step); groups stay known until their last chunk."""
        for seq in self.running:
            seq.slot = -1
        self.running.clear()
        self.waiting.clear()

    def forget(self, group: SequenceGroup) -> None:
        self.groups.pop(group.request_id, None)

    @property
    def num_running_requests(self) -> int:
        """Requests with a sequence still generating (a finished one may wait for its slot to be freed)."""
        return len({s.request_id for s in self.running if s.status is not SequenceStatus.FINISHED})

    def kv_tokens_used(self) -> int:
        return sum(s.length for s in self.running)
