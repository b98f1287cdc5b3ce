"""The streamed form of a generation as OpenAI chunk objects, framed for SSE or WebSocket.

`chat_events` / `completion_events` yield plain dicts and finally `DONE`; SSE turns each into
`data: {...}\\n\\n` and WebSocket into one text frame, so both transports send identical objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

from shipyard.api.errors import APIError, from_exception
from shipyard.inference.pipeline import ShuttingDown
from shipyard.api.formatting import (
    ChatFormatter,
    CompletionFormatter,
    TextOffsets,
    chat_logprobs,
    completion_logprobs,
)
from shipyard.inference.generation import Generation
from shipyard.engines.base import GenerationChunk

DONE = "[DONE]"

def engine_failure(engine) -> APIError:
    """A generation that broke after it started: our engine's fault (500), or an upstream's (502)."""
    if engine.remote:
        return APIError(502, "The upstream engine failed while generating this response.", code="upstream_error")
    return APIError(500, "The engine failed while generating this response.", code="engine_error")
SHUTTING_DOWN = from_exception(ShuttingDown())


async def _events(gen: Generation, fmt: ChatFormatter | CompletionFormatter,
                  render: Callable[[int, GenerationChunk], list[dict]]) -> AsyncIterator[dict | str]:
    """Every chunk rendered to objects, then the usage chunk (if asked) and DONE; always closed.

    The request is settled before DONE is sent: a client that sends its next request the moment
    it reads DONE finds its concurrency slot already free."""
    try:
        async for prompt_index, chunk in gen.chunks():
            if chunk.finish_reason == "error":
                break
            for event in render(prompt_index, chunk):
                yield event
        if gen.failed:
            yield engine_failure(gen.engine).body()
        elif gen.interrupted:
            yield SHUTTING_DOWN.body()
        elif fmt.include_usage:
            yield fmt.usage_chunk(gen.usage)
        await gen.aclose()
        await gen.finish()
        yield DONE
    finally:
        await gen.aclose()
        await gen.finish()


def chat_events(gen: Generation, fmt: ChatFormatter, want_logprobs: bool) -> AsyncIterator[dict | str]:
    started: set[int] = set()

    def render(_: int, chunk: GenerationChunk) -> list[dict]:
        events = []
        if chunk.index not in started:  # each choice opens with its role
            started.add(chunk.index)
            events.append(fmt.chunk(chunk.index, {"role": "assistant", "content": ""}))
        if chunk.text or (want_logprobs and chunk.logprobs):
            logprobs = chat_logprobs(chunk.logprobs) if want_logprobs and chunk.logprobs else None
            events.append(fmt.chunk(chunk.index, {"content": chunk.text}, logprobs=logprobs))
        if chunk.tool_calls:
            events.append(fmt.chunk(chunk.index, {"tool_calls": [d.openai() for d in chunk.tool_calls]}))
        if chunk.finish_reason is not None:
            events.append(fmt.chunk(chunk.index, {}, finish_reason=chunk.finish_reason))
        return events

    return _events(gen, fmt, render)


def completion_events(gen: Generation, fmt: CompletionFormatter, want_logprobs: bool) -> AsyncIterator[dict | str]:
    offsets: dict[int, TextOffsets] = {}

    def render(prompt_index: int, chunk: GenerationChunk) -> list[dict]:
        index = prompt_index * gen.n + chunk.index
        if not (chunk.text or chunk.finish_reason is not None or (want_logprobs and chunk.logprobs)):
            return []
        logprobs = None
        if want_logprobs and chunk.logprobs:
            logprobs = completion_logprobs(chunk.logprobs, offsets.setdefault(index, TextOffsets()))
        return [fmt.chunk(index, chunk.text, chunk.finish_reason, logprobs)]

    return _events(gen, fmt, render)


async def sse(events: AsyncIterator[dict | str]) -> AsyncIterator[bytes]:
    # aclosing: when the client vanishes, the generation is closed (and billed) right here, not
    # whenever the garbage collector finalizes the generator.
    async with contextlib.aclosing(events):
        async for event in events:
            payload = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"), ensure_ascii=False)
            yield f"data: {payload}\n\n".encode()


async def run_until_disconnect(receive, work):
    """Await `work`, cancelling it if the client disconnects first (non-streamed requests).

    The work runs in this task; only the watcher is a task of its own (one task per request,
    not two plus asyncio.wait's bookkeeping)."""
    current = asyncio.current_task()
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                current.cancel()
                return

    watch_task = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected and current.uncancel() == 0:  # our own cancel, not the server's
            raise ClientDisconnected() from None
        raise
    finally:
        watch_task.cancel()


class ClientDisconnected(Exception):
    pass
