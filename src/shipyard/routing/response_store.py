"""The last good answer for a prompt: the end of a fallback chain when every engine is down.

Small, in memory, least recently used first out. Keyed as the cache keys answers (`cache/keys.py`:
the request's scope, so no answer ever crosses tenants, the deployment, every parameter that
shapes the output and the prompt), kept as the cache keeps them (`cache/recording.py`: the chunks
the engine sent), and only for answers the same question would get again (deterministic) that
completed. The response says it came from here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from shipyard.cache import keys, recording
from shipyard.engines.base import GenerationChunk, GenerationRequest


def answer_key(deployment: str, request: GenerationRequest) -> str:
    return keys.request_key(keys.partition(request.scope, deployment, "", request.params), request)


class ResponseStore:
    def __init__(self, max_entries: int = 1000):
        self.max_entries = max_entries
        self._answers: OrderedDict[str, bytes] = OrderedDict()

    @staticmethod
    def keeps(request: GenerationRequest) -> bool:
        return keys.deterministic(request.params)

    def remember(self, key: str, chunks: list[GenerationChunk]) -> None:
        """An answer's chunks, kept if it completed."""
        if not recording.complete(chunks):
            return
        self._answers[key] = recording.encode(chunks)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)

    def recall(self, key: str) -> bytes | None:
        found = self._answers.get(key)
        if found is not None:
            self._answers.move_to_end(key)
        return found


async def replay(request: GenerationRequest, stored: bytes) -> AsyncIterator[GenerationChunk]:
    """A remembered answer as the chunks of a response (no engine ran: its prompt counts as reused)."""
    for chunk in recording.decode(stored, request.request_id):
        yield chunk
