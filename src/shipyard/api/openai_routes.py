"""OpenAI-compatible HTTP routes: chat completions, completions, models. They parse, call the
request pipeline (inference/pipeline.py) and frame its generation as SSE or JSON."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from shipyard.api.authorization import caller_of, services_of
from shipyard.api.formatting import (
    ChatFormatter,
    CompletionFormatter,
    TextOffsets,
    completion_logprobs,
    vllm_prompt_logprobs,
)
from shipyard.api.protocol import ChatCompletionRequest, CompletionRequest, cache_control
from shipyard.api.streaming import (
    SHUTTING_DOWN,
    ClientDisconnected,
    chat_events,
    completion_events,
    engine_failure,
    run_until_disconnect,
    sse,
)
from shipyard.api.strict_json import StrictJSONRoute
from shipyard.gateway.auth import Caller
from shipyard.inference import pipeline
from shipyard.inference.generation import Generation
from shipyard.inference.record import RequestRecord
from shipyard.inference.services import Services
from shipyard.routing.router import ModelNotFoundError

router = APIRouter(route_class=StrictJSONRoute)
log = logging.getLogger("shipyard.api")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# 499: nginx's "client closed request"; the client is gone, this is for the log only.
_CLIENT_CLOSED = 499


EVALUATIONS = ("consistency",)  # checks a request may ask for (x-shipyard-evaluate; admins only)


def evaluation_asked(header: str | None) -> str | None:
    return header if header in EVALUATIONS else None


def _read_headers(record: RequestRecord, headers) -> None:
    record.cache_header = headers.get("cache-control")
    record.evaluate = evaluation_asked(headers.get("x-shipyard-evaluate"))
    record.episode = episode_of(headers)


def episode_of(headers) -> str | None:
    """The x-shipyard-episode-id header, bounded (it is hashed and stored, never trusted further)."""
    value = headers.get("x-shipyard-episode-id")
    return value[:200] if value else None


def _read_body(record: RequestRecord, body) -> None:
    record.model, record.stream, record.user = body.model, body.stream, body.user
    record.reference_context = body.reference_context


async def prepare_chat(body: ChatCompletionRequest, services: Services, record: RequestRecord, caller: Caller):
    _read_body(record, body)
    engine = pipeline.route(services, caller, record)
    prompt, params = body.to_engine()
    record.response_id = f"chatcmpl-{uuid.uuid4().hex}"
    gen = await pipeline.start(services, caller, record, engine, [prompt], params,
                               cache_control(body.cache, record.cache_header), body.cache_salt)
    fmt = ChatFormatter(record.response_id, int(time.time()), body.model, body.include_usage)
    return gen, fmt, params.logprobs


async def prepare_completion(body: CompletionRequest, services: Services, record: RequestRecord,
                             caller: Caller):
    _read_body(record, body)
    engine = pipeline.route(services, caller, record)
    prompts, params = body.to_engine()
    control = cache_control(body.cache, record.cache_header)
    record.response_id = f"cmpl-{uuid.uuid4().hex}"
    gen = await pipeline.start(services, caller, record, engine, prompts, params, control, body.cache_salt)  # limits see every prompt and choice
    fmt = CompletionFormatter(record.response_id, int(time.time()), body.model, body.include_usage)
    return gen, fmt, params.logprobs


async def _respond(request: Request, stream: bool, gen: Generation, events, build_body):
    """SSE for streamed calls; otherwise run to the end (aborting if the client leaves) and build the body."""
    if stream:
        return StreamingResponse(sse(events), media_type="text/event-stream",
                                 headers={**_SSE_HEADERS, **gen.route_headers()})
    try:
        results = await run_until_disconnect(request.receive, gen.collect())
    except ClientDisconnected:
        await gen.aclose()
        return Response(status_code=_CLIENT_CLOSED)
    finally:
        if gen.interrupted or gen.failed:
            await gen.aclose()
        await gen.finish()
    if gen.failed:
        raise engine_failure(gen.engine)
    if gen.interrupted:
        raise SHUTTING_DOWN
    return JSONResponse(await build_body(results), headers={**gen.debug_headers(), **gen.route_headers()})


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    _read_headers(request.state.record, request.headers)
    gen, fmt, want_logprobs = await prepare_chat(body, services_of(request), request.state.record,
                                                 caller_of(request))

    async def build_body(results):
        choices = [ChatFormatter.choice(i, "".join(c.text), c.finish_reason, c.logprobs if want_logprobs else None,
                                        c.tool_calls)
                   for i, c in enumerate(results)]
        response = fmt.response(choices, gen.usage)
        if body.prompt_logprobs is not None:
            response["prompt_logprobs"] = vllm_prompt_logprobs(gen.prompt_logprobs.get(0, []))
        return response

    events = chat_events(gen, fmt, want_logprobs) if body.stream else None
    return await _respond(request, body.stream, gen, events, build_body)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    _read_headers(request.state.record, request.headers)
    gen, fmt, want_logprobs = await prepare_completion(body, services_of(request), request.state.record,
                                                       caller_of(request))
    prompts = body.prompts()

    async def build_body(results):
        choices = []
        for i, c in enumerate(results):
            prompt_index = i // gen.n
            prompt = prompts[prompt_index]
            prefix, entries = "", list(c.logprobs or [])
            if body.echo:  # the prompt, then the completion; with logprobs, every prompt token scored
                prefix = prompt.text if prompt.text is not None else await gen.engine.decode(prompt.token_ids)
                if want_logprobs:
                    entries = gen.prompt_logprobs.get(prompt_index, []) + entries
            logprobs = None
            if want_logprobs:
                logprobs = completion_logprobs(entries, TextOffsets())
                if body.echo and c.logprobs:  # completion tokens start right after the prompt's text
                    logprobs["text_offset"][-len(c.logprobs):] = _offsets_from(len(prefix), c.logprobs)
            choice = {"index": i, "text": prefix + "".join(c.text), "logprobs": logprobs,
                      "finish_reason": c.finish_reason}
            if body.prompt_logprobs is not None:
                choice["prompt_logprobs"] = vllm_prompt_logprobs(gen.prompt_logprobs.get(prompt_index, []))
            choices.append(choice)
        return fmt.response(choices, gen.usage)

    events = completion_events(gen, fmt, want_logprobs) if body.stream else None
    return await _respond(request, body.stream, gen, events, build_body)


def _offsets_from(start: int, entries) -> list[int]:
    offsets = TextOffsets(start)
    return [offsets.take(e.bytes) for e in entries]


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
