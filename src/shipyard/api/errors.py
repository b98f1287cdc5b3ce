"""Every failure leaves the server in OpenAI's error shape with the right HTTP status.

`{"error": {"message", "type", "param", "code"}}`; messages never repeat request secrets.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shipyard.engines.errors import (
    EngineError,
    EngineOverloadedError,
    EngineTimeoutError,
    EngineUnavailableError,
    InvalidRequestError,
    UpstreamError,
)
from shipyard.gateway.errors import GatewayError
from shipyard.inference.pipeline import ShuttingDown
from shipyard.routing.router import ModelNotFoundError

log = logging.getLogger("shipyard.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_disconnected",  # nginx's "client closed request": not a server error
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    async def send(self, send, close: bool = False, websocket: bool = False) -> None:
        """Answer from plain ASGI (middleware, before the app ran). `close` drops the connection
        afterwards: the client may still be sending a body we will never read."""
        body = json.dumps(self.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *[(k.lower().encode(), v.encode()) for k, v in self.headers.items()]]
        if close:
            headers.append((b"connection", b"close"))
        prefix = "websocket.http" if websocket else "http"
        await send({"type": f"{prefix}.response.start", "status": self.status, "headers": headers})
        await send({"type": f"{prefix}.response.body", "body": body})


def from_exception(exc: BaseException, retry_after_s: int = 1) -> APIError:
    """Map a lower layer's exception to the error clients see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ShuttingDown):
        return APIError(503, "The server is shutting down; this response was cut short. Retry on another "
                        "replica.", code="server_shutting_down", headers={"Retry-After": "1"})
    if isinstance(exc, GatewayError):
        return APIError(exc.status, str(exc), code=exc.code, headers=exc.headers)
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=exc.param, code=exc.code)
    if isinstance(exc, EngineOverloadedError):
        retry = str(max(retry_after_s, int(exc.retry_after_s + 0.999)))
        return APIError(503, str(exc), code="server_overloaded", headers={"Retry-After": retry})
    if isinstance(exc, EngineUnavailableError):
        return APIError(503, str(exc), code="engine_unavailable", headers={"Retry-After": str(retry_after_s)})
    if isinstance(exc, UpstreamError):
        return APIError(502, str(exc), code="upstream_error")
    if isinstance(exc, EngineTimeoutError):
        return APIError(504, str(exc), code="upstream_timeout")
    if isinstance(exc, EngineError):
        return APIError(500, f"The engine failed: {exc}", code="engine_error")
    store_error = _store_error(exc, retry_after_s)
    if store_error is not None:
        return store_error
    return APIError(500, "The server had an error while processing your request.", code="internal_error")


def require(service, message: str, code: str):
    """A service the route needs, or a 409 saying this server runs without it."""
    if service is None:
        raise APIError(409, message, code=code)
    return service


def status_of(exc: BaseException) -> int:
    """The status a failure is answered with (the pipeline records it on a refused request's usage)."""
    return from_exception(exc).status


def error_type(status: int) -> str:
    """OpenAI's error type for a status."""
    return _TYPES.get(status, "server_error")


def _store_error(exc: BaseException, retry_after_s: int) -> APIError | None:
    """Database and network faults are the store's, not the request's: 503 (or 409 for a lost race)."""
    from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
    from sqlalchemy.orm.exc import StaleDataError

    if isinstance(exc, (IntegrityError, StaleDataError)):
        return APIError(409, "The resource was changed by a concurrent request; retry.", code="conflict")
    if isinstance(exc, DataError):
        return APIError(400, "A value is out of the range the store accepts.", code="invalid_value")
    if isinstance(exc, (DBAPIError, OSError, TimeoutError, ConnectionError)):
        return APIError(503, "A backing store is unavailable; retry shortly.", code="store_unavailable",
                        headers={"Retry-After": str(retry_after_s)})
    return None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request. The body must be valid JSON.", None
    message = first.get("msg", "Invalid value")
    if param:
        message = f"Invalid value for '{param}': {message}"
    return message, param


def _respond(request: Request, error: APIError) -> JSONResponse:
    record = getattr(request.state, "record", None)
    if record is not None:
        record.error_type = error.type
        if error.status in (502, 503, 504):  # worth quoting to an operator: say which request it was
            error = APIError(error.status, f"{error.message} (request id {record.request_id})", param=error.param,
                             code=error.code, type=error.type, headers=error.headers)
    return error.response()


def install_error_handlers(app: FastAPI, retry_after_s: int = 1) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _respond(request, exc)

    @app.exception_handler(EngineError)
    @app.exception_handler(ModelNotFoundError)
    @app.exception_handler(GatewayError)
    async def _lower_layer(request: Request, exc: Exception):
        return _respond(request, from_exception(exc, retry_after_s))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return _respond(request, APIError(400, message, param=param, code="invalid_value" if param else "invalid_json"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        return _respond(request, APIError(exc.status_code, message, code=getattr(exc, "code", None),
                                          headers=getattr(exc, "headers", None)))

    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm.exc import StaleDataError

    # Store faults are registered by class: Starlette answers these in its exception middleware,
    # whereas an `Exception` handler answers and then re-raises (a traceback in the log).
    @app.exception_handler(DBAPIError)
    @app.exception_handler(StaleDataError)
    @app.exception_handler(OSError)
    @app.exception_handler(TimeoutError)
    async def _store(request: Request, exc: Exception):
        error = from_exception(exc, retry_after_s)
        log.warning("%s %s: %s (%s)", request.method, request.url.path, error.code, type(exc).__name__)
        return _respond(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        error = from_exception(exc, retry_after_s)
        if error.status >= 500 and error.code == "internal_error":
            log.exception("unhandled error")
        else:  # an expected fault (a store outage, a lost race): one line, no traceback
            log.warning("%s %s: %s (%s)", request.method, request.url.path, error.code, type(exc).__name__)
        return _respond(request, error)
