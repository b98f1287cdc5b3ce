"""OpenAI-compatible HTTP routes: chat completions, completions, models."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shipyard.api.errors import APIError
from shipyard.api.formatting import ChatFormatter, CompletionFormatter, completion_logprobs
from shipyard.api.generation import ClientDisconnected, Generation, run_until_disconnect
from shipyard.api.middleware import RequestRecord
from shipyard.api.protocol import ChatCompletionRequest, CompletionRequest
from shipyard.api.streaming import chat_events, completion_events, sse
from shipyard.engines.base import GenerationRequest
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


def services_of(request) -> Services:
    return request.app.state.services


def prepare_chat(body: ChatCompletionRequest, services: Services, record: RequestRecord):
    record.model, record.stream = body.model, body.stream
    engine = services.router.resolve(body.model)
    prompt, params = body.to_engine()
    requests = [GenerationRequest(record.request_id, prompt, params, record.arrival)]
    gen = Generation(engine, requests, params.n, record, services.metrics)
    gen.start()
    fmt = ChatFormatter(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, body.include_usage)
    return gen, fmt, params.logprobs


def prepare_completion(body: CompletionRequest, services: Services, record: RequestRecord):
    record.model, record.stream = body.model, body.stream
    engine = services.router.resolve(body.model)
    prompts, params = body.to_engine()
    requests = [
        GenerationRequest(record.request_id if len(prompts) == 1 else f"{record.request_id}-{i}", p, params,
                          record.arrival)
        for i, p in enumerate(prompts)
    ]
    gen = Generation(engine, requests, params.n, record, services.metrics)
    gen.start()
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
        gen.finish()
    if gen.failed:
        raise APIError(500, "The engine failed while generating this response.", code="engine_error")
    return JSONResponse(build_body(results), headers=gen.debug_headers())


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    gen, fmt, want_logprobs = prepare_chat(body, services_of(request), request.state.record)

    def build_body(results):
        choices = [ChatFormatter.choice(i, "".join(c.text), c.finish_reason, c.logprobs if want_logprobs else None)
                   for i, c in enumerate(results)]
        return fmt.response(choices, gen.usage)

    events = chat_events(gen, fmt, want_logprobs) if body.stream else None
    return await _respond(request, body.stream, gen, events, build_body)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    gen, fmt, want_logprobs = prepare_completion(body, services_of(request), request.state.record)
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
