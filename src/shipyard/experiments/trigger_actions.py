"""What a retraining trigger does when it fires: an HMAC-signed webhook, retried, that carries an
idempotency key (the same on every retry, so the receiver starts one job), or a command run
without a shell, with the payload on stdin, killed past its timeout. Both get one JSON payload
naming the trigger, what was observed, and where to fetch the data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from urllib.parse import urlencode

import httpx

from shipyard.experiments.trigger_spec import CommandAction, TriggerSpec
from shipyard.monitor.notify import post_signed, secret_of
from shipyard.monitor.settings import Webhook

IDEMPOTENCY_HEADER = "Idempotency-Key"
OUTPUT_KEPT = 2000  # characters of a command's output kept in the audit


def idempotency_key(trigger: str, slot: int) -> str:
    return f"{trigger}-{slot}"


def data_links(spec: TriggerSpec, since: str, external_url: str) -> dict[str, str]:
    """Where the receiver fetches what it retrains on (admin API routes; the caller brings a key)."""
    deployment = next((c.deployment for c in (spec.metric, spec.drift, spec.feedback_count)
                       if c is not None and c.deployment), None)
    scope = {"deployment": deployment} if deployment else {}
    name = spec.metric.score if spec.metric else (
        f"feedback.{spec.feedback_count.metric}" if spec.feedback_count and spec.feedback_count.metric else None)
    links = {"review_export": f"{external_url}/admin/review/export?{urlencode({**scope, 'status': 'labelled'})}",
             "usage": f"{external_url}/admin/usage"}
    if name:
        links["scores"] = f"{external_url}/admin/scores?{urlencode({**scope, 'name': name, 'start': since})}"
    if spec.drift:
        links["drift"] = f"{external_url}/admin/drift"
    return links


async def send_webhook(hook: Webhook, payload: dict, key: str, trigger: str) -> dict:
    body = json.dumps(payload).encode()
    async with httpx.AsyncClient() as client:
        delivered, attempts, status = await post_signed(
            client, hook, secret_of(hook), body, "retraining webhook",
            {IDEMPOTENCY_HEADER: key, "X-Shipyard-Trigger": trigger})
    return {"ok": delivered, "attempts": attempts, "http_status": status}


async def run_command(action: CommandAction, payload: dict, key: str) -> dict:
    env = {**os.environ, "SHIPYARD_TRIGGER": payload["trigger"], "SHIPYARD_IDEMPOTENCY_KEY": key}
    try:
        process = await asyncio.create_subprocess_exec(
            *action.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)  # its own group: killed whole
    except OSError as exc:
        return {"ok": False, "error": f"could not start: {exc.strerror or exc}"}
    try:
        output, _ = await asyncio.wait_for(process.communicate(json.dumps(payload).encode()), action.timeout_s)
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return {"ok": False, "error": f"timed out after {action.timeout_s:g} s", "exit_code": process.returncode}
    text = output.decode(errors="replace")
    return {"ok": process.returncode == 0, "exit_code": process.returncode, "output": text[-OUTPUT_KEPT:]}
