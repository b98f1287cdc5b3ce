"""The database handle: async engine, sessions, and migrations to head at start."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger("shipyard.store")


def valid_rows(rows, parse, what: str) -> list:
    """Each stored row parsed, leaving out (with a warning) any that no longer parses: one bad row,
    written by an older version or by hand, must not break every read, nor the server's start."""
    parsed = []
    for row in rows:
        try:
            parsed.append(parse(row))
        except ValueError as exc:
            log.warning("ignoring a stored %s that is no longer valid: %s", what, str(exc).splitlines()[0][:200])
    return parsed


def default_url(data_dir: Path) -> str:
    return os.environ.get("SHIPYARD_DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir / 'shipyard.db'}"


class Database:
    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        self._migration_lock = _FileLock(Path(url.split("///", 1)[-1] + ".migrate.lock")) if self.is_sqlite else None

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision; several processes may start at once."""
        if self.is_sqlite:
            await asyncio.to_thread(self._migration_lock.acquire)
            try:
                async with self.engine.begin() as connection:
                    await connection.run_sync(_upgrade)
            finally:
                self._migration_lock.release()
            return
        async with self.engine.begin() as connection:
            # Held to the end of the transaction: the other processes wait, then find nothing to do.
            await connection.execute(text("SELECT pg_advisory_xact_lock(7405163021)"))
            await connection.run_sync(_upgrade)

    async def close(self) -> None:
        await self.engine.dispose()


class _FileLock:
    """An exclusive lock on a file next to the SQLite database, across processes."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the usage writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _upgrade(sync_connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = sync_connection
    command.upgrade(config, "head")
