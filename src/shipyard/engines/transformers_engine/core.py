"""The step loop's body: admit, prefill, decode, sample, detokenize, emit.

Runs on the engine's own thread and never touches asyncio; it returns plain `GenerationChunk`s
for the facade to hand over to the event loop.
"""

from __future__ import annotations

import time


from shipyard.engines.base import GenerationChunk, TokenLogprob, Usage
from shipyard.engines.transformers_engine.model_runner import ModelRunner
from shipyard.engines.transformers_engine.prefix_cache import PrefixCache
from shipyard.engines.transformers_engine.sampler import Sampler
from shipyard.engines.transformers_engine.scheduler import Scheduler
from shipyard.engines.transformers_engine.sequence import Sequence, SequenceGroup, SequenceStatus


class EngineCore:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler, sampler: Sampler, max_model_len: int,
                 prefix_cache: PrefixCache | None = None):
        self.runner = runner
        self.scheduler = scheduler
        self.sampler = sampler
        self.max_model_len = max_model_len
        self.prefix_cache = prefix_cache
        self.busy_s = 0.0  # seconds spent in steps: utilization is its rate

    def step(self) -> list[GenerationChunk]:
        started = time.perf_counter()
        chunks, rows = self._step()
        self.account(time.perf_counter() - started, rows, chunks)
        return chunks

    def account(self, elapsed: float, rows: list[Sequence], chunks: list[GenerationChunk]) -> None:
        """Compute time spent on `rows`, whose output is `chunks`."""
        self.busy_s += elapsed
        if rows:  # the step's time, shared among the sequences it computed: the compute-time cost basis
            share = elapsed / len(rows)
            for seq in rows:
                seq.compute_s += share
            for chunk in chunks:
                if chunk.usage is not None:
                    chunk.usage.compute_s += share * sum(1 for s in rows if s.request_id == chunk.request_id)

    def _step(self) -> tuple[list[GenerationChunk], list[Sequence]]:
        # Sequences already running decode one token; newly admitted prompts are prefilled in the
        # same forward and get their first token from it, joining the decode rows next step.
        decoding = list(self.scheduler.running)
        masks = self.sampler.start_masks(decoding)  # grammar masks, beside the forward
        admitted = self.scheduler.admit()
        if admitted:
            now = time.monotonic()
            for group in admitted:
                for seq in group.sequences:
                    seq.timings.scheduled = now
        scored = {i for i, g in enumerate(admitted) if g.sequences[0].params.prompt_logprobs is not None}
        pool = self.prefix_cache
        # Known prefixes are copied in, not computed (scored prompts need every position).
        names = [pool.names(g.prompt_ids, g.cache_salt) for g in admitted] if pool is not None else []
        for i, group in enumerate(admitted if pool is not None else []):
            if i not in scored:
                group.cached_tokens = pool.load(group.prompt_ids, names[i], group.sequences[0].slot)
        decode_logits, prefill_logits, prompt_logits = self.runner.forward(
            [s.last_token for s in decoding],
            [s.length - 1 for s in decoding],
            [g.prompt_ids for g in admitted],
            [g.sequences[0].slot for g in admitted],
            scored,
            [g.cached_tokens for g in admitted],
        )
        for group, group_names in zip(admitted, names):  # before any fork or compaction touches these slots
            pool.store(group_names, group.sequences[0].slot)
        for index, logits in prompt_logits.items():
            group = admitted[index]
            group.prompt_logprobs = self.sampler.prompt_logprobs(
                logits, group.prompt_ids, group.sequences[0].params.prompt_logprobs or 0)
        touched: list[Sequence] = []
        if admitted:
            touched += self._start_groups(admitted, prefill_logits)
        if decoding:
            self._accept(decoding, self.sampler(decode_logits, decoding, masks))
            touched += decoding
        finished = [s for s in self.scheduler.running if s.status is SequenceStatus.FINISHED]
        if finished:
            self.scheduler.remove_finished(finished)
        return self.emit(touched), touched

    def abort(self, request_id: str) -> list[GenerationChunk]:
        group = self.scheduler.abort(request_id)
        if group is None:
            return []
        now = time.monotonic()
        for seq in group.sequences:
            if seq.timings.finished is None:
                seq.timings.finished = now
        return self.emit([s for s in group.sequences if s.finish_reason == "abort"])

    def fail_all(self) -> list[GenerationChunk]:
        """After an unrecoverable step error: end every request with finish_reason "error"."""
        groups = list(self.scheduler.groups.values())
        self.scheduler.reset()  # no cache moves: the cache may be what broke
        now = time.monotonic()
        chunks: list[GenerationChunk] = []
        for group in groups:
            for seq in group.sequences:
                if seq.status is not SequenceStatus.FINISHED:
                    seq.status, seq.finish_reason, seq.timings.finished = SequenceStatus.FINISHED, "error", now
            chunks += self.emit(group.sequences)
        return chunks

    def _start_groups(self, groups: list[SequenceGroup], logits) -> list[Sequence]:
        """First tokens of newly prefilled requests; the other choices fork the prompt's cache."""
        rows, seqs, touched = [], [], []
        now = time.monotonic()
        for row, group in enumerate(groups):
            first = group.sequences[0]
            for seq in group.sequences:
                touched.append(seq)
                if seq.max_tokens <= 0:  # prompt scoring only: nothing to generate
                    self._finish(seq, "length", None, now)
                    continue
                if seq is not first:
                    self.scheduler.cache.move(first.slot, seq.slot, len(group.prompt_ids))
                rows.append(row)
                seqs.append(seq)
        if seqs:
            self._accept(seqs, self.sampler(logits[rows], seqs))
        return touched

    def _accept(self, seqs: list[Sequence], results: list[tuple[int, TokenLogprob | None]]) -> None:
        now = time.monotonic()
        for seq, (token, logprob) in zip(seqs, results):
            self.accept_token(seq, token, logprob, now)

    def accept_token(self, seq: Sequence, token: int, logprob: TokenLogprob | None, now: float) -> None:
        if seq.timings.first_token is None:
            seq.timings.first_token = now
        seq.output_ids.append(token)
        seq.pending_ids.append(token)
        if logprob is not None:
            seq.pending_logprobs.append(logprob)
        if seq.needs_penalties:
            if seq.output_counts is None:
                seq.output_counts = self.sampler.new_counts()
            seq.output_counts[token] += 1

        eos = token in seq.eos_token_ids
        if seq.matcher is not None and not eos and not seq.matcher.consume_token(token):
            self._finish(seq, "error", None, now)  # the mask allowed it: the grammar's state broke
        elif eos and not seq.params.ignore_eos:
            self._finish(seq, "stop", None, now)
        elif token in seq.params.stop_token_ids:
            self._finish(seq, "stop", token, now)
        else:
            text, stop = seq.stop_matcher.feed(seq.detokenizer.add(token))
            self._add_text(seq, text)
            if stop is not None:
                self._finish(seq, "stop", stop, now, flush=False)
            elif seq.matcher is not None and seq.matcher.is_stopped():  # the grammar is complete
                self._finish(seq, "stop", None, now)
            elif len(seq.output_ids) >= seq.max_tokens or seq.length >= self.max_model_len:
                self._finish(seq, "length", None, now)

    @staticmethod
    def _add_text(seq: Sequence, text: str) -> None:
        """Text after stop strings; with tools, calls are taken out of it as they are written."""
        if seq.tool_parser is None:
            seq.pending_text += text
            return
        content, calls = seq.tool_parser.feed(text)
        seq.pending_text += content
        seq.pending_tool_calls += calls

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | int | None, now: float, flush: bool = True):
        if flush:  # text held for a possible stop string, or a partial character, is real output
            text, stop = seq.stop_matcher.feed(seq.detokenizer.flush())
            if stop is not None:
                reason, stop_reason = "stop", stop
            else:
                text += seq.stop_matcher.flush()
            self._add_text(seq, text)
        if seq.tool_parser is not None:
            content, calls = seq.tool_parser.flush()
            seq.pending_text += content
            seq.pending_tool_calls += calls
            if reason == "stop" and seq.tool_parser.calls:
                reason = "tool_calls"
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        seq.timings.finished = now

    def emit(self, seqs: list[Sequence]) -> list[GenerationChunk]:
        chunks: list[GenerationChunk] = []
        last_of_group: dict[str, GenerationChunk] = {}
        for seq in seqs:
            chunk = GenerationChunk(
                request_id=seq.request_id,
                index=seq.index,
                text=seq.pending_text,
                token_ids=seq.pending_ids,
                logprobs=seq.pending_logprobs if seq.params.logprobs else None,
                finish_reason=seq.finish_reason,  # type: ignore[arg-type]
                stop_reason=seq.stop_reason,
                timings=seq.timings,
                confidence=seq.confidence() if seq.finish_reason is not None else None,
                tool_calls=seq.pending_tool_calls or None,
            )
            seq.pending_text, seq.pending_ids, seq.pending_logprobs = "", [], []
            if seq.pending_tool_calls:
                seq.pending_tool_calls = []
            group = self.scheduler.groups.get(seq.request_id)
            if group is not None and group.prompt_logprobs is not None:  # once, on the first chunk
                chunk.prompt_logprobs, group.prompt_logprobs = group.prompt_logprobs, None
            chunks.append(chunk)
            last_of_group[seq.request_id] = chunk
        for request_id, chunk in last_of_group.items():
            group = self.scheduler.groups.get(request_id)
            if group is not None and group.finished:
                chunk.usage = Usage(prompt_tokens=len(group.prompt_ids), completion_tokens=group.completion_tokens,
                                    cached_tokens=group.cached_tokens,
                                    compute_s=sum(s.compute_s for s in group.sequences))
                self.scheduler.forget(group)
        return chunks
