"""Helpers for the tests that drive experiments' parts directly: a clock the test moves, and a
migrated SQLite store (`db`: import it into the test module to use it as a fixture)."""

from __future__ import annotations

import pytest

from shipyard.store.db import Database


class Clock:
    """`clock()` is now; `clock.now += s` moves it."""

    def __init__(self, now: float = 1_800_000_000.0):  # an instant on a minute boundary
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await database.migrate()
    yield database
    await database.close()
