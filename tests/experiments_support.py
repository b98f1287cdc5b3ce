"""Helpers for the tests that drive experiments' parts directly."""

from __future__ import annotations


class Clock:
    """A clock the test moves: `clock()` is now, `clock.now += s` moves it."""

    def __init__(self, now: float = 1_800_000_000.0):  # an instant on a minute boundary
        self.now = now

    def __call__(self) -> float:
        return self.now
