"""The request pipeline, from a parsed request to a running generation and its accounting:
resolve the experiment arm and the route, bound the sequences, tokenize (once, off the event
loop), admit (limits and tiered admission, with one re-authentication when another replica
changed the key), submit, and when it ends settle the usage and tell the hooks.

It raises domain errors (the engines', the gateway's, `ShuttingDown`); `api/errors.py` maps them
to statuses. Nothing here knows HTTP.
"""

from __future__ import annotations

import logging

from shipyard.engines.base import Engine, GenerationRequest, Prompt, SamplingParams, estimate_prompt_tokens
from shipyard.engines.errors import InvalidRequestError
from shipyard.engines.side_requests import new_engine_request_id
from shipyard.gateway.auth import Caller
from shipyard.gateway.errors import GatewayError, StaleCredentials
from shipyard.gateway.service import monotonic_ms
from shipyard.hooks import FinishedRequest
from shipyard.inference.generation import Generation
from shipyard.inference.record import RequestRecord
from shipyard.inference.services import Services

log = logging.getLogger("shipyard.inference")


class ShuttingDown(Exception):
    """The server is draining: no new request starts, and one cut at the end of the grace ends."""


def route(services: Services, caller: Caller, record: RequestRecord) -> Engine:
    """The engine that serves the request: the experiment's arm where one runs on the model."""
    record.deployment = record.model
    experiments = services.experiments
    if experiments is not None:
        principal = caller.principal
        assignment = experiments.assign(record.model, principal.tenant_id, principal.key_id, record.user,
                                        record.episode)
        if assignment is not None:
            record.deployment, record.variant = assignment.deployment, assignment.variant
            record.variant_header = assignment.header()
            record.mirror, record.mirror_arm = assignment.mirror, assignment.mirror_arm
    return services.router.resolve(record.deployment)


async def start(services: Services, caller: Caller, record: RequestRecord, engine: Engine, prompts: list[Prompt],
                params: SamplingParams, control: str | None = None, salt: str | None = None) -> Generation:
    """Bound, tokenize (once, off the event loop), admit, submit."""
    if services.drain.draining:
        raise ShuttingDown("The server is shutting down; retry on another replica.")
    sequences = len(prompts) * params.n
    if sequences > services.max_sequences_per_request:
        raise InvalidRequestError(f"This request asks for {sequences} sequences ({len(prompts)} prompts × "
                                  f"n={params.n}); the limit is {services.max_sequences_per_request} per request.",
                                  "prompt", "too_many_sequences")
    prompt_ids = [await engine.encode(prompt) for prompt in prompts]
    for prompt in prompts:  # a grammar for the output's shape, compiled off the event loop
        await engine.prepare(prompt, params)
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


async def _admit(services: Services, caller: Caller, record: RequestRecord, prompt_tokens: int,
                 max_tokens: int | None, prompts: int, choices: int):
    """Take the limits and an admission slot; wire the accounting to the end of the response."""
    gateway = services.gateway
    usage_id = record.usage_id
    principal, ticket = await take_ticket(services, caller, record, usage_id, prompt_tokens, max_tokens, prompts,
                                          choices)

    async def on_finish(gen: Generation, status: int) -> None:
        await gateway.finish(ticket, usage_id, status, gen.usage.prompt_tokens, gen.usage.completion_tokens,
                             gen.usage.cached_tokens, monotonic_ms(record.arrival), record.ttft_ms, record.cache,
                             gen.usage.compute_s, record.response_id, record.variant, record.episode)
        if services.hooks.finished:
            services.hooks.request_finished(_finished(gen, status, usage_id, principal, record))

    async def on_error(exc: BaseException) -> None:
        status = services.status_of(exc)  # as the client is told (api/errors.py maps it)
        await gateway.finish(ticket, usage_id, status, prompt_tokens, 0, 0, monotonic_ms(record.arrival), None,
                             response_id=record.response_id, variant=record.variant, episode=record.episode)

    return on_finish, on_error


async def take_ticket(services: Services, caller: Caller, record: RequestRecord, usage_id: str, prompt_tokens: int,
                      max_tokens: int | None, prompts: int, choices: int):
    """The gateway's admission (limits, tiered queue), with one re-authentication when another
    replica changed the key; a refusal is metered. Returns (principal, ticket)."""
    gateway = services.gateway
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
    return principal, ticket


def _finished(gen: Generation, status: int, usage_id: str, principal, record: RequestRecord) -> FinishedRequest:
    finished = FinishedRequest(usage_id, principal.tenant_id, principal.key_id, record.deployment, status, gen.usage,
                               record.cache, gen.confidence, record.finish_reason)
    if gen.output_text is not None:
        finished.prompt, finished.output = gen.requests[0].prompt.as_text(), "".join(gen.output_text)
    finished.engine_request = gen.requests[0]
    finished.evaluate = record.evaluate if principal.role == "admin" else None
    finished.reference_context = record.reference_context
    finished.variant, finished.mirror, finished.mirror_arm = record.variant, record.mirror, record.mirror_arm
    finished.ttft_ms, finished.latency_ms = record.ttft_ms, monotonic_ms(record.arrival)
    finished.user, finished.response_id = record.user, record.response_id
    return finished
