"""The request path's two hooks: the only way monitoring and experiments observe it.

- `ended`: every inference request's end, refused or served (deployment, tenant, status, TTFT,
  latency): the sliding windows' alerting and the anomaly detector listen.
- `finished`: every admitted request once it is accounted (`FinishedRequest`: usage, confidence,
  and, only for deployments whose text an observer reads, the prompt and the answer): monitors,
  shadow copies, implicit feedback and the review queue listen.

Listeners must not block: they hand work to a buffer or a task. One that raises is logged and the
others still run; a request never fails for an observer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("shipyard.hooks")


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


@dataclass(frozen=True)
class RequestEnded:
    deployment: str
    tenant_id: str | None
    status: int
    ttft_s: float | None
    latency_s: float


class RequestHooks:
    def __init__(self):
        self.ended: list[Callable[[RequestEnded], None]] = []
        self.finished: list[Callable[[FinishedRequest], None]] = []

    def request_ended(self, event: RequestEnded) -> None:
        _tell(self.ended, event)

    def request_finished(self, finished: FinishedRequest) -> None:
        _tell(self.finished, finished)


def _tell(listeners: list[Callable], event) -> None:
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # an observer's fault never fails a request
            log.exception("request observer failed")
