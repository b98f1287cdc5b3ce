"""One request's chunks as the API reads them: an async iterator over the queue the engine's
step callback fills (closing it early cancels the request), and chunks that piled up while the
reader was busy taken as one."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from shipyard.engines.base import GenerationChunk


class RequestStream:
    """Async iterator over one request's chunks; closing it early aborts the request."""

    def __init__(self, request_id: str, stream: asyncio.Queue, abandon: Callable[[str], Awaitable[None]]):
        self._request_id = request_id
        self._stream = stream
        self._abandon = abandon  # the engine forgets the stream and cancels the request
        self._done = False
        self._next = None  # taken from the queue while merging, not mergeable: the next one out

    def __aiter__(self):
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._done:
            raise StopAsyncIteration
        item, self._next = (self._next, None) if self._next is not None else (await self._stream.get(), None)
        if isinstance(item, BaseException):
            self._done = True
            raise item
        # Chunks that piled up while the reader was busy leave as one: a reader slower than the
        # engine (a small model decodes a token in a fraction of a millisecond) then frames fewer,
        # fuller events instead of falling further behind. One that keeps up sees every step.
        while not self._stream.empty():
            later = self._stream.get_nowait()
            if not _mergeable(item, later):
                self._next = later
                break
            item = _merged(item, later)
        if item.usage is not None:
            self._done = True
        return item

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await self._abandon(self._request_id)


def _mergeable(earlier: GenerationChunk, later) -> bool:
    return (isinstance(later, GenerationChunk) and later.index == earlier.index and earlier.finish_reason is None
            and (earlier.logprobs is None) == (later.logprobs is None) and later.prompt_logprobs is None)


def _merged(earlier: GenerationChunk, later: GenerationChunk) -> GenerationChunk:
    """One chunk carrying both: the later one's end (finish, usage, timings, confidence) if any."""
    return dataclasses.replace(
        later, text=earlier.text + later.text, token_ids=earlier.token_ids + later.token_ids,
        logprobs=None if earlier.logprobs is None else earlier.logprobs + later.logprobs,
        tool_calls=(earlier.tool_calls or []) + (later.tool_calls or []) or None,
        prompt_logprobs=earlier.prompt_logprobs, served_by=earlier.served_by, cache=earlier.cache,
        cache_similarity=earlier.cache_similarity)
