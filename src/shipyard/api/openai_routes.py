"""OpenAI-compatible HTTP routes: chat completions, completions, models."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shipyard.api.authorization import Caller, caller_of
from shipyard.api.errors import APIError, from_exception
from shipyard.api.formatting import ChatFormatter, CompletionFormatter, completion_logprobs
from shipyard.api.generation import ClientDisconnected, Generation, run_until_disconnect
from shipyard.api.middleware import RequestRecord
from shipyard.api.protocol import ChatCompletionRequest, CompletionRequest
from shipyard.api.streaming import chat_events, completion_events, sse
from shipyard.engines.base import GenerationRequest
from shipyard.gateway.errors import GatewayError, StaleCredentials
from shipyard.gateway.keystore import KeyStore
from shipyard.gateway.service import Gateway, monotonic_ms
from shipyard.store.db import Database
from shipyard.monitor.metrics import ServingMetrics
from shipyard.routing.router import ModelNotFoundError, Router

router = APIRouter()

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# 499: nginx's "client closed request"; the client is gone, this is for the log only.
_CLIENT_CLOSED = 499


@dataclass
class Services:
    router: Router
    metrics: ServingMetrics
    gateway: Gateway
    keystore: KeyStore | None = None
    db: Database | None = None


def services_of(request) -> Services:
    return request.app.state.services


async def _admit(services: Services, caller: Caller, record: RequestRecord, prompt_tokens: int,
                 max_tokens: int | None, choices: int):
    """Take the limits and an admission slot; wire the accounting to the end of the response."""
    gateway = services.gateway
    usage_id = record.usage_id
    principal = caller.principal
    try:
        try:
            ticket = await gateway.admit(principal, record.model, prompt_tokens, max_tokens, choices)
        except StaleCredentials:  # the key changed on another replica: check it again, once
            principal = await caller.reauthenticate()
            ticket = await gateway.admit(principal, record.model, prompt_tokens, max_tokens, choices)
    except GatewayError as exc:
        gateway.record(principal, usage_id, record.model, exc.status, latency_ms=monotonic_ms(record.arrival))
        raise
    record.rate_limit_headers = ticket.headers()

    async def on_finish(gen: Generation, status: int) -> None:
        await gateway.finish(ticket, usage_id, status, gen.usage.prompt_tokens or prompt_tokens,
                             gen.usage.completion_tokens, gen.usage.cached_tokens, monotonic_ms(record.arrival),
                             record.ttft_ms)

    async def on_error(exc: BaseException) -> None:
        await gateway.finish(ticket, usage_id, from_exception(exc).status, prompt_tokens, 0, 0,
                             monotonic_ms(record.arrival), None)

    return on_finish, on_error


async def _start(services: Services, caller: Caller, record: RequestRecord, engine,
                 requests: list[GenerationRequest]) -> Generation:
    params = requests[0].params
    prompt_tokens = 0
    for request in requests:
        prompt_tokens += await engine.count_prompt_tokens(request.prompt) or 0
    on_finish, on_error = await _admit(services, caller, record, prompt_tokens, params.max_tokens,
                                       params.n * len(requests))
    gen = Generation(engine, requests, params.n, record, services.metrics)
    gen.on_finish = on_finish
    try:
        gen.start()
    except BaseException as exc:
        await on_error(exc)
        raise
    return gen


async def prepare_chat(body: ChatCompletionRequest, services: Services, record: RequestRecord, caller: Caller):
    record.model, record.stream = body.model, body.stream
    engine = services.router.resolve(body.model)
    prompt, params = body.to_engine()
    requests = [GenerationRequest(record.request_id, prompt, params, record.arrival)]
    gen = await _start(services, caller, record, engine, requests)
    fmt = ChatFormatter(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.include_usage)
    return gen, fmt, params.logprobs


async def prepare_completion(body: CompletionRequest, services: Services, record: RequestRecord,
                             caller: Caller):
    record.model, record.stream = body.model, body.stream
    engine = services.router.resolve(body.model)
    prompts, params = body.to_engine()
    requests = [
        GenerationRequest(record.request_id if len(prompts) == 1 else f"{record.request_id}-{i}", p, params,
                          record.arrival)
        for i, p in enumerate(prompts)
    ]
    gen = await _start(services, caller, record, engine, requests)  # limits see every prompt and choice
    fmt = CompletionFormatter(f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.include_usage)
    return gen, fmt, params.logprobs


async def _respond(request: Request, stream: bool, gen: Generation, events, build_body):
    """SSE for streamed calls; otherwise run to the end (aborting if the client leaves) and build the body."""
    if stream:
        return StreamingResponse(sse(events), media_type="text/event-stream", headers=_SSE_HEADERS)
    try:
        results = await run_until_disconnect(request.receive, gen.collect())
    except ClientDisconnected:
        await gen.aclose()
        return Response(status_code=_CLIENT_CLOSED)
    finally:
        await gen.finish()
    if gen.failed:
        raise APIError(500, "The engine failed while generating this response.", code="engine_error")
    return JSONResponse(build_body(results), headers=gen.debug_headers())


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    gen, fmt, want_logprobs = await prepare_chat(body, services_of(request), request.state.record,
                                                 caller_of(request))

    def build_body(results):
        choices = [ChatFormatter.choice(i, "".join(c.text), c.finish_reason, c.logprobs if want_logprobs else None)
                   for i, c in enumerate(results)]
        return fmt.response(choices, gen.usage)

    events = chat_events(gen, fmt, want_logprobs) if body.stream else None
    return await _respond(request, body.stream, gen, events, build_body)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    gen, fmt, want_logprobs = await prepare_completion(body, services_of(request), request.state.record,
                                                       caller_of(request))
    prompts = body.prompts()

    def build_body(results):
        choices = []
        for i, c in enumerate(results):
            prefix = (prompts[i // gen.n].text or "") if body.echo else ""
            logprobs = completion_logprobs(c.logprobs or [], len(prefix)) if want_logprobs else None
            choices.append({"index": i, "text": prefix + "".join(c.text), "logprobs": logprobs,
                            "finish_reason": c.finish_reason})
        return fmt.response(choices, gen.usage)

    events = completion_events(gen, fmt, want_logprobs) if body.stream else None
    return await _respond(request, body.stream, gen, events, build_body)


def _model_card(info) -> dict:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by,
            "max_model_len": info.max_model_len}


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [_model_card(m) for m in services_of(request).router.models()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request):
    for info in services_of(request).router.models():
        if info.id == model_id:
            return _model_card(info)
    raise ModelNotFoundError(model_id)
