"""Alert state: threshold rules and anomaly detections become firing and resolved alerts.

Each alert is one series — a rule (or detector) and its labels (deployment, tenant, metric) —
with Prometheus's lifecycle: a condition seen first is *pending*; held for the rule's `for_s` it
*fires*, with severity `warning` or `critical` by the threshold it passes; when it no longer holds
it is *resolved*. Only transitions (and a still-firing alert every `repeat_interval_s`) produce
notifications, so a receiver never sees one firing twice. Pure and clock-driven: tests step it.
"""

from __future__ import annotations

import hashlib
import json
import operator
from dataclasses import dataclass, field

from shipyard.monitor.settings import AlertRule

_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def fingerprint(labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class AlertEvent:
    """A notification: one alert's transition to firing (or a new severity) or to resolved."""

    status: str  # firing | resolved
    labels: dict[str, str]  # alertname, severity, deployment, tenant, metric, ...
    annotations: dict[str, str]
    value: float | None
    starts_at: float  # wall-clock seconds
    ends_at: float | None = None
    repeat: int = 0  # 0: the transition itself; n: its n-th reminder while still firing
    row_id: int | None = None  # its row in the alert history, once recorded

    @property
    def fingerprint(self) -> str:
        return fingerprint({k: v for k, v in self.labels.items() if k != "severity"})


@dataclass
class _Series:
    labels: dict[str, str]
    pending_since: float | None = None
    firing: str | None = None  # the severity while firing
    starts_at: float = 0.0
    last_sent: float = 0.0
    repeats: int = 0
    value: float | None = None


@dataclass
class AlertBook:
    """Every series' state; `update` takes one observation of one series and returns what to send."""

    repeat_interval_s: float = 4 * 3600.0
    _series: dict[str, _Series] = field(default_factory=dict)

    def update(self, labels: dict[str, str], severity: str | None, value: float | None, now: float,
               for_s: float = 0.0, annotations: dict[str, str] | None = None) -> list[AlertEvent]:
        """`severity`: the condition's severity now (None: it does not hold)."""
        key = fingerprint(labels)
        series = self._series.get(key)
        if series is None:
            if severity is None:
                return []
            series = self._series[key] = _Series(dict(labels))
        series.value = value
        notes = annotations or {}
        if severity is None:
            self._series.pop(key)
            if series.firing is None:
                return []  # pending only: never told anyone
            return [AlertEvent("resolved", {**series.labels, "severity": series.firing}, notes, value,
                               series.starts_at, now)]
        if series.firing is None:
            if series.pending_since is None:
                series.pending_since = now
            if now - series.pending_since < for_s:
                return []
            series.firing, series.starts_at, series.last_sent = severity, now, now
            return [AlertEvent("firing", {**series.labels, "severity": severity}, notes, value, now)]
        if severity != series.firing or now - series.last_sent >= self.repeat_interval_s:
            series.repeats = 0 if severity != series.firing else series.repeats + 1
            series.firing, series.last_sent = severity, now
            return [AlertEvent("firing", {**series.labels, "severity": severity}, notes, value, series.starts_at,
                               repeat=series.repeats)]
        return []

    def active(self) -> list[dict]:
        return [{"labels": {**s.labels, "severity": s.firing}, "value": s.value, "starts_at": s.starts_at}
                for s in self._series.values() if s.firing is not None]

    def forget(self, predicate) -> list[AlertEvent]:
        """Drop the series a deleted rule owned; the firing ones are resolved."""
        events = []
        for key, series in list(self._series.items()):
            if predicate(series.labels):
                self._series.pop(key)
                if series.firing is not None:
                    events.append(AlertEvent("resolved", {**series.labels, "severity": series.firing},
                                             {"summary": "the rule was removed"}, series.value, series.starts_at))
        return events


def severity_of(rule: AlertRule, value: float) -> str | None:
    compare = _COMPARE[rule.operator]
    if rule.alert is not None and compare(value, rule.alert):
        return "critical"
    if rule.warning is not None and compare(value, rule.warning):
        return "warning"
    return None


def evaluate_rule(book: AlertBook, rule: AlertRule, deployment: str, value: float | None,
                  now: float) -> list[AlertEvent]:
    """One rule on one deployment's current value (None: no data in the window)."""
    labels = {"alertname": rule.name, "deployment": deployment, "metric": rule.metric, "source": "rule"}
    if value is None:
        if rule.no_data == "keep":
            return []
        if rule.no_data == "alerting":
            return book.update(labels, "critical", None, now, rule.for_s,
                               {"summary": f"{rule.metric} has no data over {rule.window_s:g} s"})
        return book.update(labels, None, None, now)
    severity = severity_of(rule, value)
    threshold = rule.alert if severity == "critical" else rule.warning
    summary = rule.summary or (f"{rule.metric} is {value:.4g} ({rule.operator} {threshold:g}) on {deployment}"
                               if severity else f"{rule.metric} is back to {value:.4g} on {deployment}")
    return book.update(labels, severity, value, now, rule.for_s, {"summary": summary})
