"""Decode bursts: the steps between two changes of the batch, run by the C decode loop.

While no request waits to be admitted and every running sequence samples the simple way (no
penalties, grammar, logprobs or seed), the running set decodes in
decode_loop.c while this thread takes the ids it samples through the engine core's usual
bookkeeping (stop strings, detokenizing, tool calls, finish reasons) and streams them. A burst
ends when a sequence finishes, when a request arrives or is cancelled, at the nearest token limit,
or at the loop's capacity; the next step is then Python's again (admitting, forking, compacting).
Tokens the loop sampled for a sequence after it finished are dropped: only finished sequences'
cells hold them, and those are freed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shipyard.engines.base import GenerationChunk
from shipyard.engines.llamacpp_engine.decode_loop import DecodeLoop, RowSampler
from shipyard.engines.llamacpp_engine.native import LlamaCppError
from shipyard.engines.transformers_engine.core import EngineCore
from shipyard.engines.transformers_engine.sequence import Sequence, SequenceStatus

WAIT_S = 0.05  # at most this long between looks at the inbox, however slow a step is
EVERYTHING = 1 << 30  # a wait for more steps than any run takes: until the timeout (or the run's end)


class DecodeBursts:
    def __init__(self, core: EngineCore, loop: DecodeLoop, n_vocab: int, stream_interval_s: float = 0.0):
        self.core = core
        self.loop = loop
        self.n_vocab = n_vocab
        # Output leaves at most this often: a small model's tokens go out a few per chunk, so the
        # Python per chunk (here, on the event loop, in the client) does not compete with the loop
        # for the cores. A model slower than this streams every token on its own.
        self.interval_s = stream_interval_s
        self._samplers: dict[Sequence, RowSampler] = {}
        self.bursts = 0  # how many ran, and their steps: the engine's figures (and the tests')
        self.steps = 0

    def simple(self, seq: Sequence) -> bool:
        """Whether the loop draws for `seq` as the embedded sampler would (same order, same distribution)."""
        p = seq.params
        return seq.generator is None and seq.matcher is None and not seq.needs_penalties and not p.logprobs

    def steps_possible(self) -> int:
        """Steps a burst could take now (0: the next step must be Python's)."""
        scheduler = self.core.scheduler
        running = scheduler.running
        if scheduler.waiting or not running or len(running) > self.loop.max_rows:
            return 0
        if not all(self.simple(seq) for seq in running):
            return 0
        room = self.core.max_model_len
        return min(min(seq.max_tokens - len(seq.output_ids), room - seq.length) for seq in running)

    def run(self, steps: int, deliver: Callable[[list[GenerationChunk]], None],
            interrupted: Callable[[], bool]) -> None:
        """Decode up to `steps` steps of the running set, streaming each step's output."""
        core, loop = self.core, self.loop
        rows = list(core.scheduler.running)
        self._forget_finished(rows)
        scoring = core.sampler.confidence  # each token's logprob and entropy, for the monitors
        starts = [(seq.slot, seq.length - 1, seq.last_token) for seq in rows]
        loop.start([(*start, self._sampler(seq)) for start, seq in zip(starts, rows)], steps, scoring)
        self.bursts += 1
        seen = 0
        mark = delivered = time.perf_counter()
        try:
            while True:
                produced, done = loop.wait(seen, WAIT_S)
                early = self.interval_s - (time.perf_counter() - delivered)
                if produced > seen and not done and early > 0:  # gather what else comes within the interval
                    produced, done = loop.wait(EVERYTHING, early)
                if produced > seen:
                    live = [seq for seq in rows if seq.status is not SequenceStatus.FINISHED]
                    now = time.monotonic()
                    for step in range(seen, produced):
                        scores = loop.scores(step) if scoring else None
                        for r, (seq, token) in enumerate(zip(rows, loop.tokens(step))):
                            if seq.status is not SequenceStatus.FINISHED:
                                if scores is not None:
                                    seq.score(*scores[r])
                                core.accept_token(seq, token, None, now)
                    self.steps += produced - seen
                    seen = produced
                    chunks = core.emit(live)
                    elapsed, mark = time.perf_counter() - mark, time.perf_counter()
                    core.account(elapsed, live, chunks)
                    deliver(chunks)
                    delivered = time.perf_counter()
                    if any(seq.status is SequenceStatus.FINISHED for seq in live):
                        loop.stop()
                if done:
                    break
                if interrupted():
                    loop.stop()
        finally:
            loop.stop()
            status = loop.join()  # before anything else touches the context
            self._record(starts)
        finished = [seq for seq in core.scheduler.running if seq.status is SequenceStatus.FINISHED]
        if finished:
            core.scheduler.remove_finished(finished)
        if status != 0:
            raise LlamaCppError(f"llama_decode failed with status {status}"
                                + (" (no room left in the KV cache)" if status == 1 else ""))

    def _record(self, starts: list[tuple[int, int, int]]) -> None:
        """What the run decoded into each row's slot: its last token, then each step's but the
        last (sampled, not yet decoded), finished rows' included."""
        produced, _ = self.loop.wait(0, 0.0)  # the run has ended: this is final
        decoded = self.loop.all_tokens(produced)
        slots = self.core.runner.cache
        for r, (slot, position, token) in enumerate(starts):
            slots.wrote(slot, position, [token, *decoded[: max(produced - 1, 0), r].tolist()])

    def _sampler(self, seq: Sequence) -> RowSampler:
        sampler = self._samplers.get(seq)
        if sampler is None:
            sampler = self._samplers[seq] = RowSampler(seq.params, self.n_vocab, self.core.sampler.vocab_size)
        return sampler

    def _forget_finished(self, running: list[Sequence]) -> None:
        """Free the samplers of sequences that left (finished, aborted or failed) since."""
        still = set(running)
        for seq in [s for s in self._samplers if s not in still]:
            self._samplers.pop(seq).close()

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()
        self.loop.close()
