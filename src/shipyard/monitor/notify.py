"""Alert delivery: Alertmanager-v4-shaped webhook JSON, HMAC-signed, retried, deduplicated.

The body is what Alertmanager's webhook receiver sends (version "4", groupKey, status, receiver,
groupLabels, commonLabels, commonAnnotations, externalURL, alerts[] with status, labels,
annotations, startsAt, endsAt, generatorURL, fingerprint), so any tool that takes Alertmanager
webhooks takes ours. Each request carries

    X-Shipyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

(the timestamp is signed too, so a receiver can refuse replays). Each webhook has its own queue
and sender task: a frozen receiver delays only itself. Network errors, 5xx and 429 are retried
with exponential backoff up to `max_attempts`; other 4xx are final. The same notification
(fingerprint, status, severity, start) is never sent twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections import OrderedDict
from datetime import datetime, timezone

import httpx

from shipyard.aio import cancel_and_wait
from shipyard.monitor.alerts import AlertEvent
from shipyard.monitor.settings import Webhook

log = logging.getLogger("shipyard.alerts")

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for a firing alert
SIGNATURE_HEADER = "X-Shipyard-Signature"


def rfc3339(seconds: float | None) -> str:
    if seconds is None:
        return ZERO_TIME
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver does (and the tests do): check the HMAC and the timestamp's freshness."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def payload(event: AlertEvent, receiver: str, external_url: str) -> dict:
    labels = dict(event.labels)
    group = {"alertname": labels.get("alertname", "")}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{group["alertname"]}"}}',
        "truncatedAlerts": 0,
        "status": event.status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": dict(event.annotations),
        "externalURL": external_url,
        "alerts": [{
            "status": event.status,
            "labels": labels,
            "annotations": dict(event.annotations),
            "startsAt": rfc3339(event.starts_at),
            "endsAt": rfc3339(event.ends_at) if event.status == "resolved" else ZERO_TIME,
            "generatorURL": f"{external_url}/dashboard/alerts",
            "fingerprint": event.fingerprint,
        }],
    }


def secret_of(hook: Webhook) -> bytes | None:
    value = os.environ.get(hook.secret_env) if hook.secret_env else hook.secret
    return value.encode() if value else None


class _Sender:
    def __init__(self, hook: Webhook, external_url: str, on_result):
        self.hook = hook
        self.external_url = external_url
        self.secret = secret_of(hook)
        self.queue: asyncio.Queue[AlertEvent] = asyncio.Queue(maxsize=10_000)
        self.on_result = on_result
        self.task: asyncio.Task | None = None

    async def run(self, client: httpx.AsyncClient) -> None:
        while True:
            event = await self.queue.get()
            delivered, attempts = await self._deliver(client, event)
            self.on_result(self.hook, event, delivered, attempts)

    async def _deliver(self, client: httpx.AsyncClient, event: AlertEvent) -> tuple[bool, int]:
        body = json.dumps(payload(event, self.hook.receiver, self.external_url)).encode()
        delivered, attempts, _ = await post_signed(client, self.hook, self.secret, body, "alert webhook")
        return delivered, attempts


async def post_signed(client: httpx.AsyncClient, hook: Webhook, secret: bytes | None, body: bytes, what: str,
                      headers: dict[str, str] | None = None) -> tuple[bool, int, int | None]:
    """POST the body, signed afresh at each attempt, retrying network errors, 5xx and 429 with
    exponential backoff. (delivered, attempts, the last HTTP status or None)."""
    status = None
    for attempt in range(1, hook.max_attempts + 1):
        sent = {"content-type": "application/json", **(headers or {})}
        if secret is not None:
            sent[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
        try:
            response = await client.post(hook.url, content=body, headers=sent, timeout=hook.timeout_s)
            status = response.status_code
            if status < 300:
                return True, attempt, status
            if status < 500 and status != 429:
                log.warning("%s %s refused the delivery: HTTP %s", what, hook.receiver, status)
                return False, attempt, status
        except httpx.HTTPError as exc:
            log.warning("%s %s unreachable (attempt %d): %s", what, hook.receiver, attempt, type(exc).__name__)
        if attempt < hook.max_attempts:
            await asyncio.sleep(min(hook.backoff_s * 2 ** (attempt - 1), 300.0))
    return False, hook.max_attempts, status


class Notifier:
    def __init__(self, hooks: list[Webhook], external_url: str, on_result=None):
        self._senders = [_Sender(h, external_url, on_result or (lambda *a: None)) for h in hooks]
        self._sent: OrderedDict[tuple, None] = OrderedDict()  # recent notifications, for dedup
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if not self._senders:
            return
        self._client = httpx.AsyncClient(follow_redirects=False)
        for sender in self._senders:
            sender.task = asyncio.create_task(sender.run(self._client))

    async def stop(self) -> None:
        for sender in self._senders:
            await cancel_and_wait(sender.task)
        if self._client is not None:
            await self._client.aclose()

    def send(self, event: AlertEvent) -> None:
        key = (event.fingerprint, event.status, event.labels.get("severity"), event.starts_at, event.ends_at, event.repeat)
        if key in self._sent:
            return
        self._sent[key] = None
        if len(self._sent) > 10_000:
            self._sent.popitem(last=False)
        for sender in self._senders:
            try:
                sender.queue.put_nowait(event)
            except asyncio.QueueFull:
                log.error("alert webhook %s is backed up: a notification was dropped", sender.hook.receiver)
