"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shipyard.store.db import Database
from shipyard.store.models import Base


async def _diff(url: str) -> list:
    db = Database(url)
    try:
        await db.migrate()
        await db.migrate()  # idempotent
        async with db.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
    finally:
        await db.close()


def test_sqlite_migrations_match_models(tmp_path):
    assert asyncio.run(_diff(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")) == []


def test_postgres_migrations_match_models(postgres_server):
    import asyncpg

    async def fresh_database() -> str:
        dsn = postgres_server.url.replace("postgresql+asyncpg", "postgresql")
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DROP DATABASE IF EXISTS migration_check")
            await connection.execute("CREATE DATABASE migration_check")
        finally:
            await connection.close()
        return postgres_server.url.rsplit("/", 1)[0] + "/migration_check"

    url = asyncio.run(fresh_database())
    assert asyncio.run(_diff(url)) == []
