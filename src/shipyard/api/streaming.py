"""The streamed form of a generation as OpenAI chunk objects, framed for SSE or WebSocket.

`chat_events` / `completion_events` yield plain dicts and finally `DONE`; SSE turns each into
`data: {...}\\n\\n` and WebSocket into one text frame, so both transports send identical objects.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from shipyard.api.errors import APIError
from shipyard.api.formatting import ChatFormatter, CompletionFormatter, chat_logprobs, completion_logprobs
from shipyard.api.generation import Generation

DONE = "[DONE]"

_ENGINE_FAILED = APIError(500, "The engine failed while generating this response.", code="engine_error")


async def chat_events(gen: Generation, fmt: ChatFormatter, want_logprobs: bool) -> AsyncIterator[dict | str]:
    try:
        started: set[int] = set()
        async for _, chunk in gen.chunks():
            index = chunk.index
            if index not in started:
                started.add(index)
                yield fmt.chunk(index, {"role": "assistant", "content": ""})
            if chunk.finish_reason == "error":
                yield _ENGINE_FAILED.body()
                break
            if chunk.text or (want_logprobs and chunk.logprobs):
                logprobs = chat_logprobs(chunk.logprobs) if want_logprobs and chunk.logprobs else None
                yield fmt.chunk(index, {"content": chunk.text}, logprobs=logprobs)
            if chunk.finish_reason is not None:
                yield fmt.chunk(index, {}, finish_reason=chunk.finish_reason)
        else:
            if fmt.include_usage:
                yield fmt.usage_chunk(gen.usage)
        yield DONE
    finally:
        await gen.aclose()
        gen.finish()


async def completion_events(gen: Generation, fmt: CompletionFormatter, want_logprobs: bool) -> AsyncIterator[dict | str]:
    try:
        offsets: dict[int, int] = {}
        async for prompt_index, chunk in gen.chunks():
            index = prompt_index * gen.n + chunk.index
            if chunk.finish_reason == "error":
                yield _ENGINE_FAILED.body()
                break
            if chunk.text or chunk.finish_reason is not None or (want_logprobs and chunk.logprobs):
                logprobs = None
                if want_logprobs and chunk.logprobs:
                    logprobs = completion_logprobs(chunk.logprobs, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(chunk.text)
                yield fmt.chunk(index, chunk.text, chunk.finish_reason, logprobs)
        else:
            if fmt.include_usage:
                yield fmt.usage_chunk(gen.usage)
        yield DONE
    finally:
        await gen.aclose()
        gen.finish()


async def sse(events: AsyncIterator[dict | str]) -> AsyncIterator[bytes]:
    async for event in events:
        payload = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        yield f"data: {payload}\n\n".encode()
