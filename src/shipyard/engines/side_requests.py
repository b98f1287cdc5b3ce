"""Requests the server sends itself, off a user's path: shadow copies, dataset replays and
self-consistency samples. Engine request ids are made here (never a client's), and a side request
goes straight to an engine: past the caches and the gateway (no tenant is billed or limited), at
the lowest priority, never retried. A failure or timeout is an outcome, not an error."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from dataclasses import dataclass

from shipyard.engines.base import GenerationRequest, Prompt, SamplingParams

SIDE_TIMEOUT_S = 600.0


def new_engine_request_id() -> str:
    return f"gen-{uuid.uuid4().hex}"


@dataclass
class SideResult:
    text: str  # the first choice's
    latency_s: float
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    compute_s: float
    status: int  # 200, 502 (failed), 504 (timed out)
    error: str | None = None


def side_request(prompt: Prompt, params: SamplingParams, scope: str | None, request_id: str | None = None,
                 max_tokens: int | None = None, prompt_ids: list[int] | None = None,
                 **overrides) -> GenerationRequest:
    """One choice, no logprobs, the lowest priority, never cached or retried. `prompt_ids` only for
    the engine that made them (another deployment's tokenizer differs: it tokenizes again)."""
    params = dataclasses.replace(params, n=1, logprobs=False, top_logprobs=0, prompt_logprobs=None, **overrides)
    if max_tokens is not None:
        params = dataclasses.replace(params, max_tokens=min(params.max_tokens or max_tokens, max_tokens))
    return GenerationRequest(request_id or new_engine_request_id(), prompt, params, time.monotonic(), prompt_ids,
                             priority=0, scope=scope or "", cache_control="no-store", max_retries=0)


async def run_side(engine, request: GenerationRequest, timeout_s: float = SIDE_TIMEOUT_S) -> SideResult:
    """The request's answer and figures; never raises but for cancellation."""
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
    except Exception as exc:  # an outcome of the side request, never a user's error
        status, error = (504 if isinstance(exc, TimeoutError) else 502), str(exc) or type(exc).__name__
    return SideResult("".join(texts), time.monotonic() - start, ttft, usage.prompt_tokens if usage else 0,
                      usage.completion_tokens if usage else 0, getattr(usage, "compute_s", 0.0) if usage else 0.0,
                      status, error)
