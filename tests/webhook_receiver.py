"""An alert webhook receiver for tests: a real HTTP server on loopback that records each delivery
(headers and body) and can refuse the first N with 503 to exercise retries."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, fail_first: int = 0):
        self.accepted: list[tuple[dict, bytes]] = []  # (headers, body) answered 200
        self.refused = 0
        self.refused_headers: list[dict] = []  # the headers of each delivery answered 503
        self._fail_left = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    if receiver._fail_left > 0:
                        receiver._fail_left -= 1
                        receiver.refused += 1
                        receiver.refused_headers.append({k.lower(): v for k, v in self.headers.items()})
                        status = 503
                    else:
                        receiver.accepted.append(({k.lower(): v for k, v in self.headers.items()}, body))
                        status = 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def alerts(self, alertname_prefix: str) -> list[dict]:
        """The accepted notifications' bodies for alerts whose name starts with the prefix."""
        with self._lock:
            bodies = [json.loads(body) for _, body in self.accepted]
        return [b for b in bodies if b["alerts"][0]["labels"]["alertname"].startswith(alertname_prefix)]

    def wait_for(self, alertname_prefix: str, status: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.alerts(alertname_prefix):
                if body["status"] == status:
                    return body
            time.sleep(0.1)
        raise TimeoutError(f"no {status} notification for {alertname_prefix} within {timeout}s")
