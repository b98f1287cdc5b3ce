"""One client request's generation: its engine request(s), merged, measured, and closed.

A completions call with several prompts becomes one engine request per prompt; their choices
are numbered `prompt_index * n + choice`. Timing metrics are taken here, on the server's side
of the engine, so TTFT includes queueing exactly as a client would feel it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from shipyard.api.middleware import RequestRecord
from shipyard.engines.base import Engine, GenerationChunk, GenerationRequest, TokenLogprob, Usage
from shipyard.monitor.metrics import ServingMetrics


@dataclass
class ChoiceResult:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


class Generation:
    def __init__(self, engine: Engine, requests: list[GenerationRequest], n: int, record: RequestRecord,
                 metrics: ServingMetrics):
        self.engine = engine
        self.requests = requests
        self.n = n
        self.record = record
        self.metrics = metrics
        self.model = record.model or ""
        self.first_token_at: float | None = None
        self.usage = Usage(prompt_tokens=0, completion_tokens=0)
        self.failed = False
        self._last_at: dict[tuple[int, int], float] = {}
        self._streams: list[AsyncIterator[GenerationChunk]] = []
        self._finished_requests = 0
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

    async def chunks(self) -> AsyncIterator[tuple[int, GenerationChunk]]:
        """(prompt index, chunk) in arrival order, measured on the way."""
        if len(self._streams) == 1:
            async for chunk in self._streams[0]:
                self._observe(0, chunk)
                yield 0, chunk
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
            try:
                async for chunk in stream:
                    queue.put_nowait((index, chunk))
            finally:
                queue.put_nowait((index, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            remaining = len(tasks)
            while remaining:
                index, chunk = await queue.get()
                if chunk is None:
                    remaining -= 1
                    continue
                self._observe(index, chunk)
                yield index, chunk
        finally:
            for task in tasks:
                task.cancel()

    async def aclose(self) -> None:
        """Abort whatever is still running (client gone, or an error mid-way)."""
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
        if chunk.token_ids:
            key = (prompt_index, chunk.index)
            previous = self._last_at.get(key)
            if self.first_token_at is None:
                self.first_token_at = now
                self.record.ttft_ms = (now - self.record.arrival) * 1000
                metrics.ttft.labels(model).observe(now - self.record.arrival)
            elif previous is not None:
                gap = (now - previous) / len(chunk.token_ids)
                for _ in chunk.token_ids:
                    metrics.itl.labels(model).observe(gap)
            self._last_at[key] = now
        if chunk.finish_reason == "error":
            self.failed = True
        elif chunk.finish_reason is not None:
            metrics.success.labels(model, chunk.finish_reason).inc()
            self.record.finish_reason = chunk.finish_reason
        if chunk.usage is not None:  # this engine request is complete
            self._finished_requests += 1
            self.usage.prompt_tokens += chunk.usage.prompt_tokens
            self.usage.completion_tokens += chunk.usage.completion_tokens
            self.usage.cached_tokens += chunk.usage.cached_tokens
            metrics.prompt_tokens.labels(model).inc(chunk.usage.prompt_tokens)
            metrics.generation_tokens.labels(model).inc(chunk.usage.completion_tokens)
            if chunk.timings is not None and chunk.timings.queue_time is not None:
                metrics.queue.labels(model).observe(chunk.timings.queue_time)
            self.record.prompt_tokens = self.usage.prompt_tokens
            self.record.completion_tokens = self.usage.completion_tokens

    async def finish(self) -> None:
        """Once, when the response is over: latency metric, then the gateway's accounting hook."""
        if self.finished:
            return
        self.finished = True
        self.metrics.e2e.labels(self.model).observe(time.monotonic() - self.record.arrival)
        if self.on_finish is not None:
            status = 500 if self.failed else 499 if self.record.finish_reason == "abort" else 200
            await self.on_finish(self, status)

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
            if chunk.finish_reason is not None:
                choice.finish_reason = chunk.finish_reason
        return results


async def run_until_disconnect(receive, work):
    """Await `work`, cancelling it if the client disconnects first (non-streamed requests)."""

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        work_task.cancel()
        raise ClientDisconnected()
    finally:
        watch_task.cancel()


class ClientDisconnected(Exception):
    pass
