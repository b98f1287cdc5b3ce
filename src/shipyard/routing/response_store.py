"""The last good answer for a prompt: the end of a fallback chain when every engine is down.

Small, in memory, least recently used first out. Keyed by the request's scope (its tenant:
no answer ever crosses tenants), the prompt and every parameter that shapes the output, so only
the same question gets the remembered answer, and the response says it came from here.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import asdict

from shipyard.engines.base import GenerationChunk, GenerationRequest, Usage, estimate_prompt_tokens


def answer_key(deployment: str, request: GenerationRequest) -> str:
    prompt = request.prompt
    params = asdict(request.params)
    canonical = json.dumps({"deployment": deployment, "scope": request.scope, "text": prompt.text,
                            "ids": prompt.token_ids,
                            "messages": [[m.role, m.content] for m in prompt.messages or []],
                            "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseStore:
    def __init__(self, max_entries: int = 1000):
        self.max_entries = max_entries
        self._answers: OrderedDict[str, list[tuple[str, str]]] = OrderedDict()

    def remember(self, key: str, choices: list[tuple[str, str]]) -> None:
        """`choices`: (text, finish reason) per choice, of an answer that completed."""
        self._answers[key] = choices
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)

    def recall(self, key: str) -> list[tuple[str, str]] | None:
        found = self._answers.get(key)
        if found is not None:
            self._answers.move_to_end(key)
        return found


async def replay(request: GenerationRequest, answer: list[tuple[str, str]]) -> AsyncIterator[GenerationChunk]:
    """A remembered answer as the chunks of a response (its usage estimated: no engine ran)."""
    for index, (text, finish) in enumerate(answer):
        last = index == len(answer) - 1
        yield GenerationChunk(request.request_id, index, text, [], finish_reason=finish,  # type: ignore[arg-type]
                              usage=Usage(estimate_prompt_tokens(request.prompt), 0) if last else None)
