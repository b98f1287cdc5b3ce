"""Sending one request straight to a deployment's own engine, off the user's path: what shadow
copies and dataset replays both do. Past the caches and the gateway (no tenant is billed or
limited), at the lowest priority, never retried; a failure or timeout is an outcome, not an error."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams

COPY_TIMEOUT_S = 600.0


@dataclass
class CopyResult:
    text: str
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    compute_s: float
    status: int  # 200, 502 (failed), 504 (timed out)
    error: str | None = None


def copy_request(request_id: str, prompt: Prompt, params: SamplingParams, scope: str | None,
                 max_tokens: int | None = None) -> GenerationRequest:
    """One choice, no logprobs, the lowest priority, never cached or retried."""
    params = dataclasses.replace(params, n=1, logprobs=False, top_logprobs=0, prompt_logprobs=None)
    if max_tokens is not None:
        params = dataclasses.replace(params, max_tokens=min(params.max_tokens or max_tokens, max_tokens))
    # The token ids were another deployment's tokenizer's: the engine tokenizes again.
    return GenerationRequest(request_id, prompt, params, time.monotonic(), None, priority=0, scope=scope,
                             cache_control="no-store", max_retries=0)


async def run_copy(engine, request: GenerationRequest, timeout_s: float = COPY_TIMEOUT_S) -> CopyResult:
    start, ttft, texts, usage, status, error = time.monotonic(), None, [], None, 200, None
    try:
        if engine is None:
            raise LookupError("no such deployment here")
        async with asyncio.timeout(timeout_s):
            async for chunk in engine.generate(request):
                if ttft is None and chunk.text:
                    ttft = time.monotonic() - start
                if chunk.index == 0:
                    texts.append(chunk.text)
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason == "error":
                    raise RuntimeError("the engine ended the request with an error")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # an outcome of the copy, never a user's error
        status, error = (504 if isinstance(exc, TimeoutError) else 502), str(exc) or type(exc).__name__
    return CopyResult("".join(texts), time.monotonic() - start, ttft, usage.prompt_tokens if usage else 0,
                      usage.completion_tokens if usage else 0, getattr(usage, "compute_s", 0.0) if usage else 0.0,
                      status, error)


def compare(primary: str, other: str, embed) -> dict[str, float]:
    """Two answers' agreement: exact match, length ratio (other ÷ primary) and embedding cosine."""
    scores = {"shadow.exact_match": float(primary.strip() == other.strip()),
              "shadow.length_ratio": len(other) / max(1, len(primary))}
    if embed is not None:
        vectors = embed([primary or " ", other or " "])
        scores["shadow.cosine"] = float(np.dot(vectors[0], vectors[1]))
    return scores
