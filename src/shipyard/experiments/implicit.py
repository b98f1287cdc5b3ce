"""Implicit feedback, derived from what users do next, into the same score store as explicit
feedback: a user who sends the same prompt again within the window is regenerating (the earlier
answer gets `implicit.regenerate` = 1); one who sends a different prompt within it is following
up (the earlier answer gets `implicit.follow_up` = 1). The user is the request's `user` field
within its tenant, else its API key. Only a prompt's hash and the last request per user are kept,
in a bounded map; no text.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable


class ImplicitFeedback:
    def __init__(self, writer, window_s: float = 120.0, max_users: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.writer = writer  # monitor.scores.ScoreWriter
        self.window_s = window_s
        self.max_users = max_users
        self.clock = clock
        self._last: OrderedDict[tuple, tuple[float, str, str, str]] = OrderedDict()  # user → (at, hash, id, deployment)

    def __call__(self, finished) -> None:
        if self.window_s <= 0 or finished.status != 200 or finished.engine_request is None:
            return
        text = finished.engine_request.prompt.as_text() or ""
        digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        unit = (finished.tenant_id, finished.user or f"key:{finished.key_id}")
        now = self.clock()
        last = self._last.pop(unit, None)
        if last is not None and now - last[0] <= self.window_s:
            name = "implicit.regenerate" if last[1] == digest else "implicit.follow_up"
            self.writer.record(last[2], finished.tenant_id, last[3], {name: 1.0}, source="feedback")
        self._last[unit] = (now, digest, finished.request_id, finished.deployment)
        while len(self._last) > self.max_users:
            self._last.popitem(last=False)
