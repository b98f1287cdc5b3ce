"""Pure-ASGI middleware: request ids, the body-size limit, and one log line + error metric per request.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses pass through untouched
and the log line is written when the last byte has gone, with the real status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipyard.api.errors import APIError, error_type
from shipyard.inference.record import RequestRecord
from shipyard.monitor.metrics import ServingMetrics, outcome_of

access_log = logging.getLogger("shipyard.access")


class BodyTooLarge(HTTPException):
    """Raised from `receive()` mid-body; an HTTPException so FastAPI's body parsing lets it through."""

    code = "request_too_large"

    def __init__(self, limit: int):
        super().__init__(413, f"Request body too large: the limit is {limit} bytes.",
                         headers={"Connection": "close"})


class BodyTimeout(HTTPException):
    """The client stopped sending its body: 408, and the connection is closed."""

    code = "request_timeout"

    def __init__(self, message: str):
        super().__init__(408, message, headers={"Connection": "close"})


def _is_valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 128 and all(c.isalnum() or c in "-_.:" for c in value)


METERED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServingMetrics, max_body_bytes: int, body_timeout_s: float = 30.0,
                 body_idle_timeout_s: float = 10.0, on_refused: Callable[[RequestRecord], None] | None = None):
        self.app = app
        self.metrics = metrics
        # An inference call refused before it was admitted (a 400, a 404 for a model) still gets a
        # usage row, so an operator sees the client errors beside the served requests.
        self.on_refused = on_refused
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.body_idle_timeout_s = body_idle_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _is_valid_request_id(given) else f"req-{uuid.uuid4().hex}"
        record = RequestRecord(request_id=request_id, method=scope.get("method", "WS"), path=scope["path"],
                               client_supplied_id=request_id == given)
        scope.setdefault("state", {})["record"] = record
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, record)
            return

        id_header = (b"x-request-id", request_id.encode())
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                record.status = message["status"]
                extra = [(k.encode(), v.encode()) for k, v in record.rate_limit_headers.items()]
                message["headers"] = [*message.get("headers", []), id_header, *extra]
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(record, send_with_id, BodyTooLarge(self.max_body_bytes))
            finish_record(record, self.metrics)
            return

        received = 0
        body_done = False
        deadline = time.monotonic() + self.body_timeout_s

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect can come: no timeout applies
                return await receive()
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(min(self.body_idle_timeout_s, max(left, 0.001))):
                    message = await receive()
            except asyncio.TimeoutError:
                raise BodyTimeout("The request body did not arrive in time; the connection is closed.") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside FastAPI's handlers (e.g. a streaming route)
            if not response_started:
                await self._reject(record, send_with_id, exc)
        finally:
            finish_record(record, self.metrics)
            if (self.on_refused is not None and record.status >= 400 and not record.metered
                    and record.key_id is not None and record.path in METERED_PATHS):
                self.on_refused(record)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, record: RequestRecord) -> None:
        """The handshake is logged like a request when it is refused; an accepted socket logs each
        request it carries (api/websocket.py), then nothing more."""

        async def send_watching(message: Message) -> None:
            if message["type"] == "websocket.accept":
                record.status = 101
            elif message["type"] == "websocket.http.response.start":
                record.status = message["status"]
            elif message["type"] == "websocket.close" and record.status == 0:
                record.status = 403
            await send(message)

        try:
            await self.app(scope, receive, send_watching)
        finally:
            if record.status != 101:
                finish_record(record, self.metrics)

    async def _reject(self, record: RequestRecord, send: Send, exc: BodyTooLarge | BodyTimeout) -> None:
        await APIError(exc.status_code, exc.detail, code=exc.code).send(send, close=True)


def _escape(value) -> str:
    """Log values come from clients (path, model): control characters would forge log lines."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def finish_record(record: RequestRecord, metrics: ServingMetrics) -> None:
    """One access-log line and the error metric for a finished request (HTTP or one on a socket)."""
    latency_ms = (time.monotonic() - record.arrival) * 1000
    if record.status >= 400:
        record.error_type = record.error_type or error_type(record.status)
        model = metrics.model_label(record.deployment or record.model)  # never a client's made-up name
        metrics.errors.labels(model, record.error_type, str(record.status)).inc()
    if record.model is not None and record.stream is not None:  # an inference request: its outcome
        outcome = outcome_of(record.status, record.error_type, record.finish_reason)
        metrics.end_request(record.deployment or record.model, outcome, record.tenant_id, record.status,
                            record.ttft_ms / 1000 if record.ttft_ms is not None else None, latency_ms / 1000)
    if record.path in ("/metrics", "/health", "/ready") or not access_log.isEnabledFor(logging.INFO):
        return  # probes would drown the log; and a line nobody logs is not worth formatting
    hidden = ("arrival", "client_supplied_id", "metered", "rate_limit_headers", "reference_context", "variant_header",
              "mirror_arm")  # no client text in logs
    fields = {k: v for k, v in vars(record).items() if k not in hidden and v is not None}
    fields["latency_ms"] = round(latency_ms, 2)
    if record.ttft_ms is not None:
        fields["ttft_ms"] = round(record.ttft_ms, 2)
    summary = " ".join(f"{k}={_escape(v)}" for k, v in fields.items() if k not in ("method", "path", "request_id"))
    access_log.info("%s %s %s %s", record.request_id, record.method, _escape(record.path), summary, extra=fields)
