"""One client request's generation: its engine request(s), merged, measured, and closed.

A completions call with several prompts becomes one engine request per prompt; their choices
are numbered `prompt_index * n + choice`. Engine request ids are made here, never taken from
the client, so two requests can never share a stream. Timing metrics are taken on the server's
side of the engine, so TTFT includes queueing exactly as a client would feel it. Completion
tokens are counted as they arrive: a request that ends early (client gone, shutdown, engine
error) is billed for what it generated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from shipyard.inference.drain import Drain
from shipyard.inference.record import RequestRecord
from shipyard.engines.base import Engine, GenerationChunk, GenerationRequest, TokenLogprob, Usage
from shipyard.engines.structured import ToolCall, ToolCallDelta, merge_deltas
from shipyard.monitor.metrics import ServingMetrics

_INTERRUPTED = object()  # the drain's signal, queued like a chunk


@dataclass
class ChoiceResult:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    tool_call_deltas: list[ToolCallDelta] = field(default_factory=list)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return merge_deltas(self.tool_call_deltas)


class Generation:
    def __init__(self, engine: Engine, requests: list[GenerationRequest], n: int, record: RequestRecord,
                 metrics: ServingMetrics, prompt_tokens: int = 0, drain: Drain | None = None):
        self.engine = engine
        self.requests = requests
        self.n = n
        self.record = record
        self.metrics = metrics
        self.model = record.deployment or record.model or ""  # the deployment that serves (an experiment's arm)
        self.first_token_at: float | None = None
        self.usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=0)
        self._reported = Usage(prompt_tokens=0, completion_tokens=0)  # what the engine's last chunks said
        self.prompt_logprobs: dict[int, list[TokenLogprob | None]] = {}
        self.confidence: list[dict] = []  # each finished choice's, from engines that measure it
        self.output_text: list[str] | None = None  # set to [] to keep the first choice's text (monitors)
        self._gaps: list[tuple[float, int]] = []  # inter-token latencies, for the sliding windows at the end
        self._generated = 0  # tokens an engine generated (not a cache)
        self.failed = False
        self.interrupted = False  # ended by the shutdown drain
        self._interrupting = False
        self._last_at: dict[tuple[int, int], float] = {}
        self._streams: list[AsyncIterator[GenerationChunk]] = []
        self._finished_requests = 0
        self._queue: asyncio.Queue = asyncio.Queue()
        self._drain = drain
        self._primed: list[GenerationChunk | None] | None = None
        self._forget_drain: Callable[[], None] | None = None
        self.finished = False
        # Called once at the end with (generation, status); the gateway settles and meters here.
        self.on_finish: Callable[[Generation, int], Awaitable[None]] | None = None

    def start(self) -> None:
        """Submit every engine request; validation errors surface here, before any response byte."""
        try:
            for request in self.requests:
                self._streams.append(self.engine.generate(request))
        except BaseException:
            for stream in self._streams:
                asyncio.ensure_future(stream.aclose())
            raise
        if self._drain is not None:
            self._forget_drain = self._drain.register(self.interrupt)

    def forget(self) -> None:
        """No longer in flight (it failed before its response began)."""
        if self._forget_drain is not None:
            self._forget_drain()
            self._forget_drain = None

    async def prime(self) -> None:
        """For engines whose errors come with the first chunk (remote, routed): wait for every
        stream's first chunk, so such an error still gets its own status before any byte."""
        if len(self._streams) == 1:  # the common case, without gather's task
            try:
                firsts = [await anext(self._streams[0])]
            except (Exception, StopAsyncIteration) as exc:
                firsts = [exc]
        else:
            firsts = await asyncio.gather(*(anext(stream) for stream in self._streams), return_exceptions=True)
        failure = next((f for f in firsts if isinstance(f, BaseException) and not isinstance(f, StopAsyncIteration)),
                       None)
        if failure is not None:
            for stream in self._streams:
                await stream.aclose()
            raise failure
        self._primed = [None if isinstance(f, BaseException) else f for f in firsts]
        served = next((f.served_by for f in self._primed if f is not None and f.served_by), None)
        if served:
            self.record.served_by = served
        statuses = [f.cache for f in self._primed if f is not None and f.cache]
        if statuses:  # several prompts: a miss anywhere is a miss; all answered from cache is a hit
            self.record.cache = next((s for s in ("miss", "bypass", "semantic") if s in statuses), "hit")
            similarities = [f.cache_similarity for f in self._primed if f is not None and f.cache_similarity]
            self.record.cache_similarity = min(similarities) if similarities else None

    def route_headers(self) -> dict[str, str]:
        """What the caches did; which deployment (and experiment arm) served it; who answered a routed
        request (a fallback says so)."""
        record = self.record
        headers = {"x-shipyard-cache": record.cache or "bypass",
                   "x-shipyard-variant": record.variant_header or record.deployment or record.model or ""}
        if self.record.cache_similarity is not None:
            headers["x-shipyard-cache-similarity"] = f"{self.record.cache_similarity:.4f}"
        served = self.record.served_by
        if not served:
            return headers
        headers["x-shipyard-served-by"] = served
        if served.startswith("fallback:") or served == "response-store":
            headers["x-shipyard-fallback"] = served.removeprefix("fallback:")
        return headers

    def interrupt(self) -> None:
        """The shutdown grace period is over: end this generation at the next chunk boundary."""
        self._interrupting = True
        if self._direct:  # the engine aborts it; its last chunk arrives within a step
            asyncio.ensure_future(self.engine.cancel(self.requests[0].request_id))
        else:  # merged, or remote (a remote engine cannot abort: its stream is left, and closed)
            self._queue.put_nowait((-1, _INTERRUPTED))

    @property
    def _direct(self) -> bool:
        """One stream from an in-process engine: read as it is, no merging, no task per chunk."""
        return len(self._streams) == 1 and not self.engine.remote

    async def chunks(self) -> AsyncIterator[tuple[int, GenerationChunk]]:
        """(prompt index, chunk) in arrival order, measured on the way."""
        if self._direct:  # the common case: no merging needed
            try:
                async for chunk in _prepend(self._primed[0] if self._primed else None, self._streams[0]):
                    if self._interrupting and chunk.finish_reason == "abort":
                        self.interrupted = True
                        return
                    self._observe(0, chunk)
                    yield 0, chunk
            except Exception:  # the engine stopped under us: end like a failed step
                self.failed = True
            return

        async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
            try:
                async for chunk in _prepend(self._primed[index] if self._primed else None, stream):
                    self._queue.put_nowait((index, chunk))
            except Exception as exc:  # the engine stopped under us: end like a failed step
                self._queue.put_nowait((index, exc))
            finally:
                self._queue.put_nowait((index, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            remaining = len(tasks)
            while remaining:
                index, chunk = await self._queue.get()
                if chunk is _INTERRUPTED:
                    self.interrupted = True
                    return
                if chunk is None:
                    remaining -= 1
                    continue
                if isinstance(chunk, Exception):
                    self.failed = True
                    return
                self._observe(index, chunk)
                yield index, chunk
        finally:
            for task in tasks:
                task.cancel()
            # wait for them: a stream a pump is still reading cannot be closed (aclose) meanwhile
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Abort whatever is still running (client gone, shutdown, or an error mid-way)."""
        unfinished = self._finished_requests < len(self._streams)
        for stream in self._streams:
            await stream.aclose()
        if unfinished and not self.failed:
            self.metrics.success.labels(self.model, "abort").inc()
            self.record.finish_reason = "abort"
            self._finished_requests = len(self._streams)

    def _observe(self, prompt_index: int, chunk: GenerationChunk) -> None:
        now = time.monotonic()
        metrics, model = self.metrics, self.model
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs[prompt_index] = chunk.prompt_logprobs
        tokens = len(chunk.token_ids) or chunk.num_tokens
        if tokens:
            self.usage.completion_tokens += tokens  # billed even if the request ends early
            self.record.completion_tokens = self.usage.completion_tokens
            if not self.from_cache:  # engine work only: a cached answer generated nothing
                metrics.count_tokens(model, "generation", tokens, window=False)
                self._generated += tokens
            key = (prompt_index, chunk.index)
            previous = self._last_at.get(key)
            if self.first_token_at is None:
                self.first_token_at = now
                self.record.ttft_ms = (now - self.record.arrival) * 1000
                metrics.observe_latency(model, "ttft", now - self.record.arrival)
            if previous is None and tokens > 1:  # a choice's first chunk brought more at once: no gaps between
                metrics.observe_latency(model, "itl", 0.0, tokens - 1, window=False)
                self._gaps.append((0.0, tokens - 1))
            elif previous is not None:
                gap = (now - previous) / tokens
                metrics.observe_latency(model, "itl", gap, tokens, window=False)
                self._gaps.append((gap, tokens))
            self._last_at[key] = now
        if chunk.confidence is not None:
            self.confidence.append(chunk.confidence)
        if self.output_text is not None and prompt_index == 0 and chunk.index == 0 and chunk.text:
            self.output_text.append(chunk.text)
        if chunk.finish_reason == "error":
            self.failed = True
        elif chunk.finish_reason is not None:
            metrics.success.labels(model, chunk.finish_reason).inc()
            self.record.finish_reason = chunk.finish_reason
        if chunk.usage is not None:  # this engine request is complete
            self._finished_requests += 1
            self._reported.prompt_tokens += chunk.usage.prompt_tokens
            self._reported.completion_tokens += chunk.usage.completion_tokens
            if self._finished_requests == len(self._streams):  # the engine's own counts are the truth
                self.usage.prompt_tokens = self._reported.prompt_tokens or self.usage.prompt_tokens
                self.usage.completion_tokens = self._reported.completion_tokens or self.usage.completion_tokens
            self.usage.cached_tokens += chunk.usage.cached_tokens
            self.usage.compute_s += chunk.usage.compute_s
            if not self.from_cache:
                metrics.count_tokens(model, "prompt", chunk.usage.prompt_tokens - chunk.usage.cached_tokens)
            if chunk.timings is not None and chunk.timings.queue_time is not None:
                metrics.observe_latency(model, "queue", chunk.timings.queue_time)
            self.record.prompt_tokens = self.usage.prompt_tokens

    @property
    def from_cache(self) -> bool:
        """Answered by the exact or semantic cache, without an engine."""
        return self.record.cache in ("hit", "semantic")

    @property
    def status(self) -> int:
        if self.failed:
            return 500
        if self.interrupted:
            return 503
        return 499 if self.record.finish_reason == "abort" else 200

    async def finish(self) -> None:
        """Once, when the response is over: latency metric, then the gateway's accounting hook."""
        if self.finished:
            return
        self.finished = True
        self.forget()
        self.record.prompt_tokens = self.usage.prompt_tokens
        if self.status == 499 and self.record.status < 400:  # a stream's 200 went out; the log tells the truth
            self.record.status = 499
        self.metrics.observe_latency(self.model, "e2e", time.monotonic() - self.record.arrival)
        self.metrics.close_request(self.model, self._gaps, self._generated)
        if self.on_finish is not None:
            await self.on_finish(self, self.status)

    def debug_headers(self) -> dict[str, str]:
        headers = {}
        if self.record.ttft_ms is not None:
            headers["x-shipyard-ttft-ms"] = f"{self.record.ttft_ms:.2f}"
        elapsed = time.monotonic() - self.record.arrival
        if elapsed > 0:
            headers["x-shipyard-tokens-per-second"] = f"{self.usage.completion_tokens / elapsed:.2f}"
        return headers

    async def collect(self) -> list[ChoiceResult]:
        """Run to the end (non-streaming): every choice's full text, logprobs and finish reason."""
        results = [ChoiceResult() for _ in range(len(self.requests) * self.n)]
        async for prompt_index, chunk in self.chunks():
            choice = results[prompt_index * self.n + chunk.index]
            choice.text.append(chunk.text)
            if chunk.logprobs is not None:
                choice.logprobs = (choice.logprobs or []) + chunk.logprobs
            if chunk.tool_calls:
                choice.tool_call_deltas += chunk.tool_calls
            if chunk.finish_reason is not None:
                choice.finish_reason = chunk.finish_reason
        return results


async def _prepend(first: GenerationChunk | None, stream: AsyncIterator[GenerationChunk]):
    if first is not None:
        yield first
    async for chunk in stream:
        yield chunk
