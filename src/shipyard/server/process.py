"""The app under uvicorn, with the protections uvicorn leaves to the operator.

- Request headers must arrive within `header_timeout_s` of a request's first byte (uvicorn has
  no such timeout: a client dripping headers would hold its connection forever).
- WebSocket frames and messages are bounded by `max_body_bytes`, like HTTP bodies, and a refused
  handshake is an answer, not an error.
- Shutdown drains: in-flight requests get `shutdown_grace_s` to finish, then end cleanly with
  an error event (api/drain.py) before uvicorn's own deadline would cut them mid-stream.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from shipyard.config import ServerConfig


class TimedHttpProtocol(HttpToolsProtocol):
    """httptools' protocol with a deadline on each request's headers."""

    header_timeout_s = 10.0

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)


class DenyingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-io WebSocket protocol, aware that an HTTP denial response (a refused
    handshake: 401, 403) completes the handshake; unpatched, every refusal logs an ERROR."""

    async def send(self, message) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_of, grace_s: float):
        super().__init__(config)
        self.drain_of = drain_of  # () -> the app's Drain (a worker process builds its app later)
        self.grace_s = grace_s

    async def shutdown(self, sockets=None) -> None:
        self.drain_of().begin(self.grace_s)
        await super().shutdown(sockets)


def run(app, server: ServerConfig) -> None:
    protocol = type("ShipyardHttpProtocol", (TimedHttpProtocol,), {"header_timeout_s": server.header_timeout_s})
    config = uvicorn.Config(
        app, host=server.host, port=server.port, log_config=None, log_level=server.log_level,
        http=protocol, ws=DenyingWebSocketProtocol, ws_max_size=server.max_body_bytes, ws_max_queue=4,
        timeout_keep_alive=max(1, round(server.keep_alive_s)),
        # uvicorn's own deadline comes after ours: by then every stream has ended cleanly.
        timeout_graceful_shutdown=int(server.shutdown_grace_s) + 5,
    )
    with asyncio.Runner(loop_factory=loop_factory(server.event_loop)) as runner:
        runner.run(DrainingServer(config, lambda: app.state.services.drain, server.shutdown_grace_s).serve())


def loop_factory(choice: str):
    """uvloop (libuv) where it is installed: a gateway spends most of its time in the event loop,
    and uvloop's is several times cheaper per callback than asyncio's pure-Python one."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    return uvloop.new_event_loop
