"""Migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and both
stores refuse to rewrite the retraining triggers' audit (append-only)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shipyard.store.db import Database
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shipyard.store.models import Base, TriggerEvaluation


async def _diff(url: str) -> list:
    db = Database(url)
    try:
        await db.migrate()
        await db.migrate()  # idempotent
        await _audit_is_append_only(db)
        async with db.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata))
    finally:
        await db.close()


async def _audit_is_append_only(db: Database) -> None:
    async with db.session() as session:
        session.add(TriggerEvaluation(trigger="t", slot=1, kind="evaluation", outcome="suppressed", reason="r",
                                      detail={}, created_at=datetime.now(timezone.utc)))
        await session.commit()
    for statement in ("UPDATE trigger_evaluations SET outcome = 'fired'", "DELETE FROM trigger_evaluations"):
        async with db.session() as session:
            with pytest.raises(DBAPIError, match="append-only"):
                await session.execute(text(statement))


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
