"""WebSocket transport: the same request bodies and the same chunk objects as SSE.

Connect to `ws://HOST/v1/chat/completions` (or `/v1/completions`), send a request body as a text
frame, receive each chunk object as a text frame and then the text `[DONE]`. Errors arrive as an
OpenAI error object (then `[DONE]`) and the socket stays open for the next request. Closing the
socket mid-stream aborts the generation (what was generated is billed). The key is checked again
for every request, and every few seconds while the socket is idle; once it is revoked, expired or
rotated out, the socket is closed (1008).
Frames and messages are bounded by `server.max_body_bytes`, like HTTP bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from shipyard.api import strict_json
from shipyard.api.strict_json import StrictJSONRoute
from pydantic import ValidationError

from shipyard.api.authorization import caller_of, services_of
from shipyard.gateway.auth import Caller
from shipyard.api.errors import APIError, from_exception
from shipyard.api.middleware import finish_record
from shipyard.inference.record import RequestRecord
from shipyard.api.openai_routes import episode_of, prepare_chat, prepare_completion
from shipyard.api.protocol import ChatCompletionRequest, CompletionRequest
from shipyard.api.streaming import DONE, chat_events, completion_events
from shipyard.gateway.errors import AuthenticationError, GatewayError

router = APIRouter(route_class=StrictJSONRoute)

IDLE_RECHECK_S = 5.0


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request.", code="invalid_json")
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return APIError(400, f"Invalid value for '{param}': {first.get('msg', 'invalid')}", param=param,
                    code="invalid_value")


async def _serve(websocket: WebSocket, model_cls, prepare, events) -> None:
    await websocket.accept()
    connection = websocket.scope["state"]["record"]
    services = services_of(websocket)
    token_check = websocket.scope["state"].get("token_check")
    count = 0
    try:
        while True:
            text = await _next_request(websocket, websocket.scope["state"].get("caller"))
            if text is None:  # the key stopped working while the socket sat idle
                await websocket.close(code=1008, reason="API key no longer valid")
                return
            count += 1
            record = RequestRecord(request_id=f"{connection.request_id}-{count}", method="WS", path=connection.path)
            try:
                # The key is checked again for every request: a key revoked, expired or rotated out
                # since the handshake stops working here, and the socket is closed.
                caller = await _recheck(websocket, token_check)
            except GatewayError as exc:
                await _refuse(websocket, record, from_exception(exc), services)
                await websocket.close(code=1008, reason="API key no longer valid")
                return
            record.tenant_id, record.key_id = caller.principal.tenant_id, caller.principal.key_id
            record.episode = episode_of(websocket.headers)
            try:
                try:
                    body = model_cls.model_validate(strict_json.loads(text))
                except ValueError as exc:  # not JSON, or a non-finite number
                    if isinstance(exc, ValidationError):
                        raise
                    raise APIError(400, f"We could not parse the JSON body of your request: {exc}",
                                   code="invalid_json") from None
                body.stream = True  # a socket always streams
                gen, fmt, want_logprobs = await prepare(body, services, record, caller)
            except ValidationError as exc:
                await _refuse(websocket, record, _validation_error(exc), services)
                continue
            except Exception as exc:
                await _refuse(websocket, record, from_exception(exc), services)
                if isinstance(exc, AuthenticationError):  # the key changed on another replica (fence)
                    await websocket.close(code=1008, reason="API key no longer valid")
                    return
                continue
            record.status = 200
            try:
                async with contextlib.aclosing(events(gen, fmt, want_logprobs)) as stream:
                    async for event in stream:
                        await websocket.send_text(event if isinstance(event, str) else json.dumps(event))
            finally:
                record.status = gen.status
                finish_record(record, services.metrics)
    except WebSocketDisconnect:
        return


async def _next_request(websocket: WebSocket, caller: Caller | None) -> str | None:
    """The next request's text; while none comes, the key is re-checked (fully, freshness
    included) every few seconds, so a revoked or expired key closes an idle socket too (None)."""
    while True:
        try:
            return await asyncio.wait_for(websocket.receive_text(), IDLE_RECHECK_S)
        except asyncio.TimeoutError:
            if caller is None:
                continue
            try:
                await caller.reauthenticate()
            except AuthenticationError:
                return None
            except GatewayError:  # the key store is away: keep the socket, check again later
                continue


async def _recheck(websocket: WebSocket, token_check) -> Caller:
    if token_check is None:  # auth disabled
        return caller_of(websocket)
    principal = await token_check()
    return Caller(principal, caller_of(websocket).reauthenticate)


async def _refuse(websocket: WebSocket, record: RequestRecord, error: APIError, services) -> None:
    record.status, record.error_type = error.status, error.type
    finish_record(record, services.metrics)
    await websocket.send_text(json.dumps(error.body()))
    await websocket.send_text(DONE)


@router.websocket("/v1/chat/completions")
async def chat_socket(websocket: WebSocket):
    await _serve(websocket, ChatCompletionRequest, prepare_chat, chat_events)


@router.websocket("/v1/completions")
async def completion_socket(websocket: WebSocket):
    await _serve(websocket, CompletionRequest, prepare_completion, completion_events)
