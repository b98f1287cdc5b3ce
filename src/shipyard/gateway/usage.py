"""Usage metering: one record per request, written in batches off the hot path, never lost.

`record()` only appends to an in-memory buffer. A background task writes batches; if the
database refuses, the batch goes to a local spool file (JSON lines, fsynced) and is replayed,
oldest first, once the database answers again. Shutdown flushes the buffer (to the database, or
the spool). Inserts ignore duplicate request ids, so a replay after a partial failure never
counts a request twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import insert

from shipyard.store.db import Database
from shipyard.store.models import UsageRecord

log = logging.getLogger("shipyard.usage")


@dataclass
class Usage:
    request_id: str
    tenant_id: str
    key_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: int
    cost_usd: float
    created_at: str  # ISO 8601, UTC
    cache: str | None = None  # hit, semantic, miss or bypass (None: no cache layer)
    user: str | None = None  # the request's `user` field (the caller's end user)
    response_id: str | None = None  # the response's id (chatcmpl-…): what feedback names
    variant: str | None = None  # "<experiment>/<arm>" when an experiment assigned the request
    episode: str | None = None  # the x-shipyard-episode-id header (feedback may name the episode)


CACHE_HITS = ("hit", "semantic")  # answered from the exact or the semantic cache


def price_of(prices: dict[str, dict[str, float]], model: str, prompt_tokens: int, completion_tokens: int,
             cached_tokens: int = 0, cache: str | None = None) -> float:
    """Cost in USD from a per-million-token price table (`default` applies to unlisted models).

    Prompt tokens whose keys/values came from the prefix cache cost `cached_prompt` (default: half
    of `prompt`); an answer from the exact or semantic cache costs `cache_hit` per token, prompt
    and completion alike (default 0: nothing was computed)."""
    price = prices.get(model) or prices.get("default") or {}
    if cache in CACHE_HITS:
        return (prompt_tokens + completion_tokens) * price.get("cache_hit", 0.0) / 1e6
    prompt_rate = price.get("prompt", 0.0)
    cached_rate = price.get("cached_prompt", prompt_rate / 2)
    return ((prompt_tokens - cached_tokens) * prompt_rate + cached_tokens * cached_rate
            + completion_tokens * price.get("completion", 0.0)) / 1e6


def spent_tokens(prompt_tokens: int, completion_tokens: int, cached_tokens: int, cache: str | None) -> int:
    """What rate limits count: the tokens an engine really processed. An answer from cache costs
    none; prompt tokens reused from the prefix cache are not counted either."""
    if cache in CACHE_HITS:
        return 0
    return prompt_tokens - cached_tokens + completion_tokens


class UsageMeter:
    def __init__(self, db: Database, spool_path: Path, flush_interval_s: float = 0.5, batch_size: int = 500):
        self.db = db
        self.spool_path = spool_path
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self._buffer: list[Usage] = []
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False

    def record(self, usage: Usage) -> None:
        self._buffer.append(usage)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    async def start(self) -> None:
        self._adopt_orphans()
        self._task = asyncio.create_task(self._run())

    def _adopt_orphans(self) -> None:
        """Take over the spools of server processes that are gone (several workers share a data
        folder, each with its own spool `usage-spool-PID.jsonl`): their records are replayed with
        ours. A rename claims each one, so two new workers never both take the same file."""
        folder = self.spool_path.parent
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("usage-spool*")):
            name = path.name
            if name.startswith(self.spool_path.stem + "."):
                continue  # our own
            original, _, adopter = name.partition(".adopting-")
            # whoever holds it: the process adopting it, else the one that wrote it (none: a single server's)
            holder = adopter or original.removeprefix("usage-spool").split(".")[0].lstrip("-")
            if holder.isdigit() and _alive(int(holder)):
                continue
            claimed = folder / f"{original}.adopting-{os.getpid()}"  # also takes over a dead adopter's claim
            try:
                os.rename(path, claimed)
            except FileNotFoundError:  # another worker claimed it first
                continue
            with open(claimed) as src, open(self.spool_path, "a") as dst:
                dst.write(src.read())
                dst.flush()
                os.fsync(dst.fileno())
            os.remove(claimed)
            log.info("adopted the usage spool %s", path.name)

    async def stop(self) -> None:
        # A flag, not task.cancel(): on 3.11 a cancel racing wait_for's own wake-up can be lost.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Replay the spool (if any), then write the buffer; whatever fails goes to the spool."""
        async with self._lock:
            if self._has_spool() and not await self._replay_spool():
                batch, self._buffer = self._buffer, []
                self._spool(batch)
                return
            while self._buffer:
                batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size:]
                if not await self._write(batch):
                    self._spool(batch + self._buffer)
                    self._buffer = []
                    return

    async def _write(self, batch: list[Usage]) -> bool:
        rows = [{**asdict(u), "created_at": datetime.fromisoformat(u.created_at)} for u in batch]
        statement = insert(UsageRecord)
        if self.db.is_sqlite:
            statement = statement.prefix_with("OR IGNORE")
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            statement = pg_insert(UsageRecord).on_conflict_do_nothing(index_elements=["request_id"])
        try:
            async with self.db.engine.begin() as connection:
                await connection.execute(statement, rows)
        except Exception as exc:
            log.warning("usage write failed (%s); spooling %d records to %s", type(exc).__name__, len(batch),
                        self.spool_path)
            return False
        return True

    def _has_spool(self) -> bool:
        return self.spool_path.exists() or self.spool_path.with_suffix(".replaying").exists()

    def _spool(self, batch: list[Usage]) -> None:
        if not batch:
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a") as f:
            for usage in batch:
                f.write(json.dumps(asdict(usage)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    async def _replay_spool(self) -> bool:
        """Write every spooled record; on success remove the spool."""
        replaying = self.spool_path.with_suffix(".replaying")
        if not replaying.exists():
            os.replace(self.spool_path, replaying)
        elif self.spool_path.exists():  # a previous replay was interrupted: append what was spooled since
            with open(self.spool_path) as src, open(replaying, "a") as dst:
                dst.write(src.read())
            os.remove(self.spool_path)
        records = [Usage(**json.loads(line)) for line in replaying.read_text().splitlines() if line.strip()]
        for start in range(0, len(records), self.batch_size):
            if not await self._write(records[start : start + self.batch_size]):
                os.replace(replaying, self.spool_path)  # keep everything for the next attempt
                return False
        os.remove(replaying)
        if records:
            log.info("replayed %d spooled usage records", len(records))
        return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def compute_rate_of(engines, prices: dict[str, float]):
    """model → USD per engine-second, from the configured hardware prices and what each embedded
    engine runs on (GPUs, or CPU cores = its threads); None for upstreams or without a price."""
    if not prices:
        return lambda model: None

    def rate(model: str) -> float | None:
        engine = engines().get(model)
        units = engine.compute_units() if engine is not None else None
        if units is None:
            return None
        kind, count = units
        hourly = prices.get("gpu_hour") if kind == "gpu" else prices.get("cpu_core_hour")
        return None if hourly is None else hourly * count / 3600

    return rate
