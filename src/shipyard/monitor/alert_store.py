"""The alert history and the rules added through the admin API, in the database (so every gateway
process and every restart sees the same)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import and_, case, delete, select, update
from sqlalchemy.exc import IntegrityError

from shipyard.monitor.alerts import AlertEvent
from shipyard.monitor.settings import AlertRule
from shipyard.store.db import Database, valid_rows
from shipyard.store.models import AlertEventRow, AlertRuleRow


class RuleExists(Exception):
    pass


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


def event_view(row: AlertEventRow) -> dict:
    return {"id": row.id, "fingerprint": row.fingerprint, "alertname": row.alertname, "status": row.status,
            "severity": row.severity, "deployment": row.deployment, "tenant_id": row.tenant_id,
            "labels": row.labels, "annotations": row.annotations, "value": row.value,
            "starts_at": row.starts_at.isoformat(), "ends_at": row.ends_at.isoformat() if row.ends_at else None,
            "delivered": row.delivered, "created_at": row.created_at.isoformat()}


class AlertStore:
    def __init__(self, db: Database):
        self.db = db

    async def record(self, events: list[AlertEvent]) -> list[int]:
        now = datetime.now(timezone.utc)
        rows = [AlertEventRow(fingerprint=e.fingerprint, alertname=e.labels.get("alertname", ""), status=e.status,
                              severity=e.labels.get("severity", ""), deployment=e.labels.get("deployment"),
                              tenant_id=e.labels.get("tenant"), labels=e.labels, annotations=e.annotations,
                              value=e.value, starts_at=_time(e.starts_at), ends_at=_time(e.ends_at), created_at=now)
                for e in events]
        async with self.db.session() as session:
            session.add_all(rows)
            await session.commit()
            return [row.id for row in rows]

    async def delivered(self, row_id: int, ok: bool) -> None:
        """Delivered means every webhook took it: one conditional update, so two webhooks finishing
        at once cannot overwrite each other's outcome."""
        column = AlertEventRow.delivered
        async with self.db.session() as session:
            await session.execute(update(AlertEventRow).where(AlertEventRow.id == row_id).values(
                delivered=case((column.is_(None), ok), else_=and_(column, ok))))
            await session.commit()

    async def history(self, tenant_id: str | None, only_tenant: bool, status: str | None = None,
                      deployment: str | None = None, limit: int = 100) -> list[dict]:
        """`only_tenant`: a tenant's view — its own tenant series, never global or other tenants' ones."""
        query = select(AlertEventRow).order_by(AlertEventRow.id.desc()).limit(limit)
        if only_tenant or tenant_id is not None:
            query = query.where(AlertEventRow.tenant_id == tenant_id)
        if status is not None:
            query = query.where(AlertEventRow.status == status)
        if deployment is not None:
            query = query.where(AlertEventRow.deployment == deployment)
        async with self.db.session() as session:
            return [event_view(row) for row in (await session.execute(query)).scalars()]

    async def active(self, tenant_id: str | None, only_tenant: bool, scan: int = 2000) -> list[dict]:
        """Alerts whose latest notification is `firing` (read from the history, so every process
        answers the same, whichever one evaluates)."""
        latest: dict[str, dict] = {}
        for event in reversed(await self.history(tenant_id, only_tenant, limit=scan)):
            latest[event["fingerprint"]] = event
        return [e for e in latest.values() if e["status"] == "firing"]

    async def rules(self) -> list[AlertRule]:
        async with self.db.session() as session:
            rows = (await session.execute(select(AlertRuleRow).order_by(AlertRuleRow.name))).scalars()
            return valid_rows(rows, lambda row: AlertRule.model_validate(row.body), "alert rule")

    async def add_rule(self, rule: AlertRule) -> None:
        try:
            async with self.db.session() as session:
                session.add(AlertRuleRow(name=rule.name, body=rule.model_dump(mode="json"),
                                         created_at=datetime.now(timezone.utc)))
                await session.commit()
        except IntegrityError:
            raise RuleExists(rule.name) from None

    async def delete_rule(self, name: str) -> bool:
        async with self.db.session() as session:
            result = await session.execute(delete(AlertRuleRow).where(AlertRuleRow.name == name))
            await session.commit()
            return result.rowcount > 0
