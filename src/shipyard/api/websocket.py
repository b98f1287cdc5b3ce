"""WebSocket transport: the same request bodies and the same chunk objects as SSE.

Connect to `ws://HOST/v1/chat/completions` (or `/v1/completions`), send a request body as a text
frame, receive each chunk object as a text frame and then the text `[DONE]`. Errors arrive as an
OpenAI error object (then `[DONE]`) and the socket stays open for the next request. Closing the
socket mid-stream aborts the generation.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from shipyard.api.authorization import caller_of
from shipyard.api.errors import APIError, from_exception
from shipyard.api.middleware import RequestRecord
from shipyard.api.openai_routes import prepare_chat, prepare_completion, services_of
from shipyard.api.protocol import ChatCompletionRequest, CompletionRequest
from shipyard.api.streaming import DONE, chat_events, completion_events

router = APIRouter()


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
    caller = caller_of(websocket)  # authenticated by the app-wide dependency
    principal = caller.principal
    count = 0
    try:
        while True:
            text = await websocket.receive_text()
            count += 1
            record = RequestRecord(request_id=f"{connection.request_id}-{count}", method="WS", path=connection.path,
                                   tenant_id=principal.tenant_id, key_id=principal.key_id)
            try:
                body = model_cls.model_validate_json(text)
                body.stream = True  # a socket always streams
                gen, fmt, want_logprobs = await prepare(body, services, record, caller)
            except ValidationError as exc:
                await websocket.send_text(json.dumps(_validation_error(exc).body()))
                await websocket.send_text(DONE)
                continue
            except Exception as exc:
                await websocket.send_text(json.dumps(from_exception(exc).body()))
                await websocket.send_text(DONE)
                continue
            async for event in events(gen, fmt, want_logprobs):
                await websocket.send_text(event if isinstance(event, str) else json.dumps(event))
    except WebSocketDisconnect:
        return


@router.websocket("/v1/chat/completions")
async def chat_socket(websocket: WebSocket):
    await _serve(websocket, ChatCompletionRequest, prepare_chat, chat_events)


@router.websocket("/v1/completions")
async def completion_socket(websocket: WebSocket):
    await _serve(websocket, CompletionRequest, prepare_completion, completion_events)
