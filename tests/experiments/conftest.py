"""A migrated SQLite store, for the experiments tests that drive their parts directly."""

from __future__ import annotations

import pytest

from shipyard.store.db import Database


@pytest.fixture
async def db(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await database.migrate()
    yield database
    await database.close()
