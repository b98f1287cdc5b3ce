"""OpenAI-compatible HTTP routes: chat completions, completions, models."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from shipyard.api.strict_json import StrictJSONRoute

from shipyard.api.authorization import Caller, caller_of
from shipyard.api.errors import APIError, from_exception
from shipyard.api.drain import Drain
from shipyard.api.formatting import (
    ChatFormatter,
    CompletionFormatter,
    TextOffsets,
    completion_logprobs,
    vllm_prompt_logprobs,
)
from shipyard.api.generation import ClientDisconnected, Generation, new_engine_request_id, run_until_disconnect
from shipyard.api.middleware import RequestRecord
from shipyard.api.protocol import ChatCompletionRequest, CompletionRequest, cache_control
from shipyard.api.streaming import SHUTTING_DOWN, chat_events, completion_events, engine_failure, sse
from shipyard.engines.base import Engine, GenerationRequest, Prompt, SamplingParams, estimate_prompt_tokens
from shipyard.gateway.errors import GatewayError, StaleCredentials
from shipyard.gateway.keystore import KeyStore
from shipyard.gateway.service import Gateway, monotonic_ms
from shipyard.store.db import Database
from shipyard.monitor.metrics import ServingMetrics
from shipyard.routing.router import ModelNotFoundError, Router

router = APIRouter(route_class=StrictJSONRoute)
log = logging.getLogger("shipyard.api")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# 499: nginx's "client closed request"; the client is gone, this is for the log only.
_CLIENT_CLOSED = 499


@dataclass
class FinishedRequest:
    """What observers of the request path (monitors, experiments) are told when a request ends."""

    request_id: str  # the usage record's id
    tenant_id: str
    key_id: str
    deployment: str
    status: int
    usage: object  # engines.base.Usage
    cache: str | None
    confidence: list[dict]  # per finished choice, where the engine measured it
    finish_reason: str | None = None
    # The first prompt and its first answer, as text: only for deployments a monitor reads text of
    # (drift, consistency, faithfulness); otherwise None and never kept.
    prompt: str | None = None
    output: str | None = None
    engine_request: object = None  # the first GenerationRequest (consistency checks sample it again)
    evaluate: str | None = None  # checks an admin asked for on this request (x-shipyard-evaluate)
    reference_context: str | None = None
    variant: str | None = None  # "<experiment>/<arm>"
    mirror: str | None = None  # a shadow copy's deployment (experiments/shadow.py)
    mirror_arm: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    user: str | None = None  # the body's `user`
    response_id: str | None = None  # chatcmpl-…, cmpl-…


@dataclass
class Services:
    router: Router
    metrics: ServingMetrics
    gateway: Gateway
    keystore: KeyStore | None = None
    db: Database | None = None
    drain: Drain = field(default_factory=Drain)
    max_sequences_per_request: int = 64
    # Called with a FinishedRequest after accounting; must not block (hand work to a task or buffer).
    observers: list = field(default_factory=list)
    monitor: object = None  # monitor.service.MonitorService: alerts, SLAs, drift (None: monitoring off)
    text_deployments: frozenset = frozenset()  # deployments whose observers read prompt and answer text
    autoscalers: dict = field(default_factory=dict)  # deployment → scaling.local.LocalAutoscaler
    experiments: object = None  # experiments.registry.ExperimentRegistry: which arm serves a request
    canary: object = None  # experiments.canary.CanaryController: the canaries' latest analyses
    triggers: object = None  # experiments.triggers.RetrainingTriggers
    replays: object = None  # experiments.replay.Replayer: champion-challenger on stored datasets


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


def services_of(request) -> Services:
    return request.app.state.services


async def _admit(services: Services, caller: Caller, record: RequestRecord, prompt_tokens: int,
                 max_tokens: int | None, prompts: int, choices: int):
    """Take the limits and an admission slot; wire the accounting to the end of the response."""
    gateway = services.gateway
    usage_id = record.usage_id
    principal = caller.principal
    try:
        try:
            ticket = await gateway.admit(principal, record.model, prompt_tokens, max_tokens, choices, prompts,
                                         record.user, record.deployment)
        except StaleCredentials:  # the key changed on another replica: check it again, once
            principal = await caller.reauthenticate()
            ticket = await gateway.admit(principal, record.model, prompt_tokens, max_tokens, choices, prompts,
                                         record.user, record.deployment)
    except GatewayError as exc:
        gateway.record(principal, usage_id, record.model, exc.status, latency_ms=monotonic_ms(record.arrival),
                       user=record.user)
        record.metered = True
        raise
    record.metered = True  # finish() writes its usage row, however it ends
    record.rate_limit_headers = ticket.headers()

    async def on_finish(gen: Generation, status: int) -> None:
        await gateway.finish(ticket, usage_id, status, gen.usage.prompt_tokens, gen.usage.completion_tokens,
                             gen.usage.cached_tokens, monotonic_ms(record.arrival), record.ttft_ms, record.cache,
                             gen.usage.compute_s, record.response_id, record.variant, record.episode)
        if services.observers:
            finished = FinishedRequest(usage_id, principal.tenant_id, principal.key_id, record.deployment, status,
                                       gen.usage, record.cache, gen.confidence, record.finish_reason)
            if gen.output_text is not None:
                finished.prompt, finished.output = gen.requests[0].prompt.as_text(), "".join(gen.output_text)
            finished.engine_request = gen.requests[0]
            finished.evaluate = record.evaluate if principal.role == "admin" else None
            finished.reference_context = record.reference_context
            finished.variant, finished.mirror, finished.mirror_arm = record.variant, record.mirror, record.mirror_arm
            finished.ttft_ms, finished.latency_ms = record.ttft_ms, monotonic_ms(record.arrival)
            finished.user, finished.response_id = record.user, record.response_id
            for observe in services.observers:
                try:
                    observe(finished)
                except Exception:  # an observer's fault never fails a request
                    log.exception("request observer failed")

    async def on_error(exc: BaseException) -> None:
        await gateway.finish(ticket, usage_id, from_exception(exc).status, prompt_tokens, 0, 0,
                             monotonic_ms(record.arrival), None, response_id=record.response_id, variant=record.variant,
                             episode=record.episode)

    return on_finish, on_error


async def _start(services: Services, caller: Caller, record: RequestRecord, engine, prompts: list[Prompt],
                 params: SamplingParams, control: str | None = None, salt: str | None = None) -> Generation:
    """Bound, tokenize (once, off the event loop), admit, submit."""
    if services.drain.draining:
        raise SHUTTING_DOWN
    sequences = len(prompts) * params.n
    if sequences > services.max_sequences_per_request:
        raise APIError(400, f"This request asks for {sequences} sequences ({len(prompts)} prompts × n={params.n}); "
                       f"the limit is {services.max_sequences_per_request} per request.", param="prompt",
                       code="too_many_sequences")
    prompt_ids = [await engine.encode(prompt) for prompt in prompts]
    prompt_tokens = sum(len(ids) if ids is not None else estimate_prompt_tokens(prompt)
                        for prompt, ids in zip(prompts, prompt_ids))
    on_finish, on_error = await _admit(services, caller, record, prompt_tokens, params.max_tokens, len(prompts),
                                       params.n)
    principal = caller.principal
    # The tenant partitions everything remembered (caches, KV prefix blocks); a cache_salt splits it further
    scope = principal.tenant_id if salt is None else f"{principal.tenant_id}\x1f{salt}"
    requests = [GenerationRequest(new_engine_request_id(), prompt, params, record.arrival, ids,
                                  priority=principal.tier, scope=scope, cache_control=control)
                for prompt, ids in zip(prompts, prompt_ids)]
    gen = Generation(engine, requests, params.n, record, services.metrics, prompt_tokens, services.drain)
    if record.deployment in services.text_deployments or record.evaluate or record.reference_context or record.mirror:
        gen.output_text = []
    gen.on_finish = on_finish
    try:
        gen.start()
        if engine.deferred_errors:
            await gen.prime()
    except BaseException as exc:
        gen.forget()  # it never ran: nothing for the shutdown drain to wait on
        await on_error(exc)
        raise
    return gen


def _route(services: Services, caller: Caller, record: RequestRecord, body) -> Engine:
    """The engine that serves the request: the experiment's arm where one runs on the model."""
    record.model, record.stream, record.user = body.model, body.stream, body.user
    record.reference_context = body.reference_context
    record.deployment = body.model
    if services.experiments is not None:
        principal = caller.principal
        assignment = services.experiments.assign(body.model, principal.tenant_id, principal.key_id, body.user,
                                                 record.episode)
        if assignment is not None:
            record.deployment, record.variant = assignment.deployment, assignment.variant
            record.variant_header = assignment.header()
            record.mirror, record.mirror_arm = assignment.mirror, assignment.mirror_arm
    return services.router.resolve(record.deployment)


async def prepare_chat(body: ChatCompletionRequest, services: Services, record: RequestRecord, caller: Caller):
    engine = _route(services, caller, record, body)
    prompt, params = body.to_engine()
    record.response_id = f"chatcmpl-{uuid.uuid4().hex}"
    gen = await _start(services, caller, record, engine, [prompt], params, cache_control(body.cache, record.cache_header),
                       body.cache_salt)
    fmt = ChatFormatter(record.response_id, int(time.time()), body.model, body.include_usage)
    return gen, fmt, params.logprobs


async def prepare_completion(body: CompletionRequest, services: Services, record: RequestRecord,
                             caller: Caller):
    engine = _route(services, caller, record, body)
    prompts, params = body.to_engine()
    control = cache_control(body.cache, record.cache_header)
    record.response_id = f"cmpl-{uuid.uuid4().hex}"
    gen = await _start(services, caller, record, engine, prompts, params, control, body.cache_salt)  # limits see every prompt and choice
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
        choices = [ChatFormatter.choice(i, "".join(c.text), c.finish_reason, c.logprobs if want_logprobs else None)
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
