"""The gateway's one entry point for the api layer: authenticate, admit, and account.

`admit()` runs after the request is parsed and its prompt counted: the model must be allowed
for the key, every limit (key, tenant, deployment) is taken atomically with an estimate
(prompt + max_tokens, and its cost), then tiered admission decides whether it may run now.
`finish()` settles the estimate to the real counts, frees the admission slot and meters usage.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from shipyard.gateway.admission import TieredAdmission
from shipyard.gateway.auth import Authenticator, Limits, Principal, generation_key
from shipyard.gateway.errors import PermissionDenied, StaleCredentials
from shipyard.gateway.limits import BUDGET, CONCURRENCY, MICRO, MINUTE_MS, RATE, Bucket, Reservation
from shipyard.gateway.usage import CACHE_HITS, Usage, UsageMeter, now_iso, price_of, spent_tokens

# With auth disabled (local use only) every request runs as this principal.
ANONYMOUS = Principal(key_id="anonymous", tenant_id="local", role="admin", tier=0, allowed_models=None,
                      key_limits=Limits(), tenant_limits=Limits())


@dataclass
class Ticket:
    principal: Principal
    model: str
    reservation: Reservation
    admission: TieredAdmission | None
    weight: int = 1  # sequences this request runs
    user: str | None = None  # the request's `user` field
    admitted: bool = False
    finished: bool = False

    def headers(self) -> dict[str, str]:
        return self.reservation.headers()


def period_window(period: str, now: datetime | None = None) -> tuple[str, int]:
    """(period id, milliseconds left in it) for 'day' or 'month' budgets, in UTC."""
    now = now or datetime.now(timezone.utc)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end_ts = start.timestamp() + 86400
        return start.strftime("%Y-%m-%d"), int((end_ts - now.timestamp()) * 1000)
    days = calendar.monthrange(now.year, now.month)[1]
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end_ts = start.timestamp() + days * 86400
    return start.strftime("%Y-%m"), int((end_ts - now.timestamp()) * 1000)


class Gateway:
    def __init__(self, authenticator: Authenticator | None, limiter, meter: UsageMeter | None,
                 admissions: dict[str, TieredAdmission], deployment_limits: dict[str, Limits],
                 prices: dict[str, dict[str, float]], default_completion_estimate: int = 256,
                 compute_rate=None):
        self.authenticator = authenticator
        self.limiter = limiter
        self.meter = meter
        self.admissions = admissions
        self.deployment_limits = deployment_limits
        self.prices = prices
        self.default_completion_estimate = default_completion_estimate
        # model → USD per engine-second, for self-hosted engines without a price of their own (or None)
        self.compute_rate = compute_rate or (lambda model: None)

    async def authenticate(self, token: str | None, defer_freshness: bool = False) -> Principal:
        if self.authenticator is None:
            return ANONYMOUS
        return await self.authenticator.authenticate(token, defer_freshness)

    def check_model(self, principal: Principal, model: str) -> None:
        if principal.allowed_models is not None and model not in principal.allowed_models:
            raise PermissionDenied(f"This API key may not use the model '{model}'.")

    def _buckets(self, principal: Principal, model: str, tokens: int, cost: float, requests: int = 1) -> list[Bucket]:
        scopes = (("key", principal.key_id, principal.key_limits, "for this API key"),
                  ("tenant", principal.tenant_id, principal.tenant_limits, "for this tenant"),
                  ("deployment", model, self.deployment_limits.get(model, Limits()), f"for the model '{model}'"))
        buckets = []
        for scope, ident, limits, whose in scopes:
            base = f"{scope}:{ident}"
            if limits.rpm:
                buckets.append(Bucket(f"{base}:rpm", RATE, limits.rpm, requests, MINUTE_MS,
                                      f"requests per minute {whose}", "requests", scope))
            if limits.tpm:
                buckets.append(Bucket(f"{base}:tpm", RATE, limits.tpm, tokens, MINUTE_MS,
                                      f"tokens per minute {whose}", "tokens", scope))
            if limits.max_concurrent:
                buckets.append(Bucket(f"{base}:leases", CONCURRENCY, limits.max_concurrent, 1, 0,
                                      f"concurrent requests {whose}", "concurrent", scope))
            if limits.budget_usd is not None:
                period, left_ms = period_window(limits.budget_period or "month")
                buckets.append(Bucket(f"{base}:budget:{period}", BUDGET, round(limits.budget_usd * MICRO),
                                      round(cost * MICRO), left_ms, f"{limits.budget_period or 'month'}ly budget {whose}",
                                      "budget", scope))
        return buckets

    async def count_call(self, principal: Principal, kind: str, per_minute: int) -> None:
        """A call that is not a model request (feedback) still takes one of the key's and the
        tenant's requests per minute, and one of its own per-key allowance; RateLimited (429) past
        either. Nothing is reserved that would need settling."""
        buckets = [b for b in self._buckets(principal, "", 0, 0.0) if b.metric == "requests" and b.scope != "deployment"]
        buckets.append(Bucket(f"key:{principal.key_id}:{kind}:rpm", RATE, per_minute, 1, MINUTE_MS,
                              f"{kind} calls per minute for this API key", "requests", "key"))
        await self.limiter.acquire(buckets)

    async def admit(self, principal: Principal, model: str, prompt_tokens: int, max_tokens: int | None,
                    n: int, prompts: int = 1, user: str | None = None, deployment: str | None = None) -> Ticket:
        """Every prompt counts as a request and every sequence (prompts × n) as a slot in
        admission, so one call with many prompts costs what that many calls would. `model` is
        what the caller asked for (its key's allowed models, the model's limits); `deployment`
        what serves it (an experiment's arm): its admission queue, its price, its usage rows.
        Raises StaleCredentials when the principal came from a cache that another replica made stale."""
        self.check_model(principal, model)
        per_sequence = self.default_completion_estimate if max_tokens is None else max_tokens
        completion = per_sequence * n * prompts
        tokens = prompt_tokens + completion
        served = deployment or model
        cost = price_of(self.prices, served, prompt_tokens, completion)
        fence = None if principal.fresh else (generation_key(principal.key_id), principal.generation)
        try:
            reservation = await self.limiter.acquire(self._buckets(principal, model, tokens, cost, prompts), fence)
        except StaleCredentials:
            self.authenticator.forget(principal.key_id)
            raise
        ticket = Ticket(principal, served, reservation, self.admissions.get(served), weight=n * prompts, user=user)
        if ticket.admission is not None:
            try:
                await ticket.admission.enter(principal.tier, ticket.weight)
            except BaseException:
                await self.limiter.settle(reservation, {"requests": 0, "tokens": 0, "budget": 0})
                raise
        ticket.admitted = True
        return ticket

    async def finish(self, ticket: Ticket, request_id: str, status: int, prompt_tokens: int,
                     completion_tokens: int, cached_tokens: int, latency_ms: float, ttft_ms: float | None,
                     cache: str | None = None, compute_s: float = 0.0, response_id: str | None = None,
                     variant: str | None = None, episode: str | None = None) -> None:
        if ticket.finished:
            return
        ticket.finished = True
        if ticket.admission is not None and ticket.admitted:
            ticket.admission.leave(ticket.weight)
        cost = self.cost_of(ticket.model, prompt_tokens, completion_tokens, cached_tokens, cache, compute_s)
        actual = {"tokens": spent_tokens(prompt_tokens, completion_tokens, cached_tokens, cache),
                  "budget": round(cost * MICRO)}
        if status >= 400 and completion_tokens == 0:
            actual["requests"] = 0  # refused after admission (e.g. context too long): not a request served
        # Otherwise whatever was generated counts, however the request ended (client gone, shutdown, error).
        await self.limiter.settle(ticket.reservation, actual)
        self.record(ticket.principal, request_id, ticket.model, status, prompt_tokens, completion_tokens,
                    cached_tokens, latency_ms, ttft_ms, cost, cache, ticket.user, response_id, variant, episode)

    def cost_of(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
                cache: str | None, compute_s: float) -> float:
        """The model's own price where the table names it; otherwise, for a self-hosted engine with a
        configured hardware price, the engine time it took; otherwise the table's default."""
        rate = None if model in self.prices else self.compute_rate(model)
        if rate is not None:
            return 0.0 if cache in CACHE_HITS else compute_s * rate
        return price_of(self.prices, model, prompt_tokens, completion_tokens, cached_tokens, cache)

    def record_refused(self, tenant_id: str, key_id: str, request_id: str, model: str, status: int,
                       latency_ms: float, user: str | None = None) -> None:
        """A call refused before admission (invalid, unknown model): a usage row with no tokens."""
        if self.meter is None:
            return
        self.meter.record(Usage(request_id=request_id, tenant_id=tenant_id, key_id=key_id, model=model[:200],
                                prompt_tokens=0, completion_tokens=0, cached_tokens=0, latency_ms=latency_ms,
                                ttft_ms=None, status=status, cost_usd=0.0, created_at=now_iso(), user=user))

    def record(self, principal: Principal, request_id: str, model: str, status: int, prompt_tokens: int = 0,
               completion_tokens: int = 0, cached_tokens: int = 0, latency_ms: float = 0.0,
               ttft_ms: float | None = None, cost: float = 0.0, cache: str | None = None,
               user: str | None = None, response_id: str | None = None, variant: str | None = None,
               episode: str | None = None) -> None:
        if self.meter is None:
            return
        self.meter.record(Usage(request_id=request_id, tenant_id=principal.tenant_id, key_id=principal.key_id,
                                model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                cached_tokens=cached_tokens, latency_ms=latency_ms, ttft_ms=ttft_ms, status=status,
                                cost_usd=cost, created_at=now_iso(), cache=cache, user=user,
                                response_id=response_id, variant=variant, episode=episode))


def monotonic_ms(since: float) -> float:
    return (time.monotonic() - since) * 1000
