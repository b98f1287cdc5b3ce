"""The experiments every server process routes by: stored in the database (those declared in
shipyard.yaml are seeded there at start), read into memory, and refreshed from the database every
few seconds, so every process assigns the same arm to the same unit.

Every change is a transition: the row's version goes up by one, guarded by the version it was read
at, and the audit log gets one event for that version (unique), so two racing admin calls cannot
both apply, and each transition is logged exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from shipyard.aio import cancel_and_wait, every
from shipyard.experiments.spec import Assignment, ExperimentSpec, pick
from shipyard.store.db import valid_rows
from shipyard.store.models import ExperimentEvent, ExperimentRow

log = logging.getLogger("shipyard.experiments")
LIVE = ("running", "paused")
ACTIONS = ("pause", "resume", "promote", "rollback")  # an admin's transitions
MIRRORED = ("shadow", "champion_challenger")  # the challenger gets copies of the champion's requests


class ExperimentError(Exception):
    """A request the registry refuses: `status` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


def _now() -> datetime:
    return datetime.now(timezone.utc)


def utc_today() -> str:
    return _now().date().isoformat()


class ExperimentRegistry:
    def __init__(self, db, configured: list[ExperimentSpec], deployments: Callable[[], set[str]],
                 refresh_s: float = 2.0):
        self.db = db
        self.configured = configured
        self.deployments = deployments  # the names the router serves now
        self.refresh_s = refresh_s
        self.specs: dict[str, ExperimentSpec] = {}
        self.versions: dict[str, int] = {}
        self._routing: dict[str, tuple[ExperimentSpec, list[float]]] = {}  # model → its experiment, weights
        self._task: asyncio.Task | None = None
        self.listeners: list[Callable[[str, str, str, dict], None]] = []  # (name, kind, actor, detail)
        self._orphans: set[str] = set()

    # ---------------------------------------------------------------- the request path
    def assign(self, model: str, tenant_id: str, key_id: str, user: str | None,
               episode: str | None) -> Assignment | None:
        """The arm for this request, or None when no experiment runs on the model."""
        entry = self._routing.get(model)
        if entry is None:
            return None
        spec, weights = entry
        if spec.tenant_id is not None and spec.tenant_id != tenant_id:
            return None
        if spec.unit == "episode" and episode:
            unit = f"episode:{episode}"
        elif spec.unit in ("episode", "user") and user:
            unit = f"user:{tenant_id}:{user}"
        else:
            unit = f"key:{key_id}"
        arm = pick(spec, weights, unit)
        if spec.mode in MIRRORED and spec.status == "running" and spec.shadow_capped_day != utc_today() and \
                random.random() < spec.shadow.sample:
            shadow = spec.arms[1]
            return Assignment(spec.name, arm.name, arm.deployment, shadow.deployment, shadow.name)
        return Assignment(spec.name, arm.name, arm.deployment)

    def _reindex(self) -> None:
        """Per model: its live experiment, else its latest promoted one (which keeps routing). One whose
        deployments this server no longer has routes nothing (the model is served as if it had none)."""
        routing: dict[str, tuple[ExperimentSpec, list[float]]] = {}
        served = self.deployments()
        for spec in sorted(self.specs.values(), key=lambda s: (s.status in LIVE, self.versions.get(s.name, 0))):
            if spec.status == "rolled_back":
                continue
            missing = [a.deployment for a in spec.arms if a.deployment not in served]
            if missing:
                if spec.name not in self._orphans:  # once, not at every refresh
                    self._orphans.add(spec.name)
                    log.warning("experiment %s routes nothing: no deployment %s here", spec.name, ", ".join(missing))
                continue
            routing[spec.model] = (spec, spec.serving_weights())
        self._routing = routing

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        for spec in self.configured:
            try:
                await self.create(spec, actor="shipyard.yaml", seeding=True)
            except ExperimentError as exc:
                if exc.code != "exists":
                    log.error("experiment %s from shipyard.yaml not started: %s", spec.name, exc)
        await self.refresh()  # the store away later: routing stays as last read
        self._task = asyncio.create_task(every(self.refresh_s, self.refresh, "refreshing experiments", log))

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def refresh(self) -> None:
        async with self.db.session() as session:
            rows = (await session.execute(select(ExperimentRow))).scalars().all()
        rows = valid_rows(rows, lambda r: (r, ExperimentSpec.model_validate(r.spec)), "experiment")
        self.specs = {r.name: spec for r, spec in rows}
        self.versions = {r.name: r.version for r, _ in rows}
        self._reindex()

    # ---------------------------------------------------------------- changes
    def _check(self, spec: ExperimentSpec) -> None:
        served = self.deployments()
        missing = [name for name in [spec.model, *(a.deployment for a in spec.arms)] if name not in served]
        if missing:
            raise ExperimentError(400, f"No deployment named {', '.join(repr(m) for m in missing)}.", "invalid_value")
        if spec.mode == "canary" and len(spec.arms) != 2:
            raise ExperimentError(400, "A canary has exactly two arms: the champion and the canary.", "invalid_value")
        clash = [s.name for s in self.specs.values() if s.model == spec.model and s.status in LIVE and
                 s.name != spec.name]
        if clash:
            raise ExperimentError(409, f"Experiment '{clash[0]}' already runs on '{spec.model}'.", "conflict")

    async def create(self, spec: ExperimentSpec, actor: str, seeding: bool = False) -> ExperimentSpec:
        await self.refresh()
        if spec.mode == "canary" and len(spec.arms) == 2:  # a canary starts at its first step
            canary = spec.arms[1].model_copy(update={"weight": spec.canary.steps[0]})
            spec = spec.model_copy(update={"arms": [spec.arms[0], canary]})
        if spec.name in self.specs:
            raise ExperimentError(409, f"An experiment named '{spec.name}' exists.", "exists")
        self._check(spec)
        now = _now()
        async with self.db.session() as session:
            session.add(ExperimentRow(name=spec.name, spec=spec.model_dump(mode="json"), version=1, created_at=now,
                                      updated_at=now))
            session.add(ExperimentEvent(experiment=spec.name, kind="created", version=1, actor=actor,
                                        detail={"spec": spec.model_dump(mode="json")}, created_at=now))
            try:
                await session.commit()
            except IntegrityError:
                raise ExperimentError(409, f"An experiment named '{spec.name}' exists.", "exists") from None
        log.info("experiment %s created by %s%s", spec.name, actor, " (from shipyard.yaml)" if seeding else "")
        await self.refresh()
        self._announce(spec.name, "created", actor, {"mode": spec.mode})
        return spec

    async def transition(self, name: str, kind: str, actor: str, change: Callable[[ExperimentSpec], ExperimentSpec],
                         detail: dict | None = None) -> ExperimentSpec:
        """Apply `change` to the stored spec at its current version, and log it once. `change` sees the
        spec as stored now and may refuse (ExperimentError); `detail` may be filled by it."""
        await self.refresh()
        current = self.specs.get(name)
        if current is None:
            raise ExperimentError(404, f"No experiment named '{name}'.", "not_found")
        version = self.versions[name]
        updated = ExperimentSpec.model_validate(change(current).model_dump())  # change may refuse (ExperimentError)
        now = _now()
        async with self.db.session() as session:
            result = await session.execute(
                update(ExperimentRow).where(ExperimentRow.name == name, ExperimentRow.version == version)
                .values(spec=updated.model_dump(mode="json"), version=version + 1, updated_at=now))
            if result.rowcount != 1:
                await session.rollback()
                raise ExperimentError(409, f"Experiment '{name}' changed meanwhile; read it again.", "conflict")
            session.add(ExperimentEvent(experiment=name, kind=kind, version=version + 1, actor=actor,
                                        detail=detail or {}, created_at=now))
            try:
                await session.commit()
            except IntegrityError:
                raise ExperimentError(409, f"Experiment '{name}' changed meanwhile; read it again.", "conflict") from None
        log.info("experiment %s: %s by %s", name, kind, actor)
        await self.refresh()
        self._announce(name, kind, actor, detail or {})
        return updated

    async def act(self, name: str, action: str, actor: str, arm: str | None = None) -> ExperimentSpec:
        """An admin's transition: pause (the split stays, nothing moves automatically), resume,
        promote (`arm`, default the first challenger: every request to it), rollback (every request
        to the champion). Checked against the stored experiment as it applies: racing calls cannot
        both succeed, and an ended experiment moves no more."""
        if action not in ACTIONS:
            raise ExperimentError(404, f"No action '{action}': {', '.join(ACTIONS)}.", "not_found")
        detail: dict = {}

        def change(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status in ("promoted", "rolled_back"):
                raise ExperimentError(409, f"'{spec.name}' has ended ({spec.status}); create a new experiment.",
                                      "conflict")
            if action == "pause" and spec.status == "paused" or action == "resume" and spec.status == "running":
                raise ExperimentError(409, f"'{spec.name}' is {spec.status} already.", "conflict")
            if action == "promote":
                chosen = arm or spec.arms[1].name
                if chosen not in [a.name for a in spec.arms]:
                    raise ExperimentError(400, f"'{spec.name}' has no arm '{chosen}'.", "invalid_value")
                detail["arm"] = chosen
                return spec.model_copy(update={"status": "promoted", "promoted_arm": chosen})
            return spec.model_copy(update={"status": {"pause": "paused", "resume": "running",
                                                      "rollback": "rolled_back"}[action]})

        return await self.transition(name, action, actor, change, detail)

    def _announce(self, name: str, kind: str, actor: str, detail: dict) -> None:
        for listener in self.listeners:  # the alert webhooks: every transition, once
            try:
                listener(name, kind, actor, detail)
            except Exception:
                log.exception("experiment transition listener failed")

    async def events(self, name: str) -> list[dict]:
        async with self.db.session() as session:
            rows = (await session.execute(select(ExperimentEvent).where(ExperimentEvent.experiment == name)
                                          .order_by(ExperimentEvent.version))).scalars().all()
        return [{"version": r.version, "kind": r.kind, "actor": r.actor, "detail": r.detail,
                 "created_at": r.created_at.isoformat()} for r in rows]
