"""The monitors' background side: every `evaluation_interval_s`, evaluate the alert rules on the
sliding windows, the anomaly detectors, the SLOs' burn rates and the drift monitor; record every
transition in the alert history and hand it to the webhooks.

It observes the request path through one hook (`on_request_end`, called by ServingMetrics when an
inference request ends), never from inside handlers. With several server processes only one
evaluates at a time: the holder of a lock file in the data folder (another takes over if it dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from shipyard.aio import cancel_and_wait
from shipyard.hooks import RequestEnded
from shipyard.monitor.alert_store import AlertStore
from shipyard.monitor.alerts import AlertBook, AlertEvent, evaluate_rule
from shipyard.monitor.anomaly import AnomalyDetector
from shipyard.monitor.drift import DriftMonitor
from shipyard.monitor.gpu import gpu_stats
from shipyard.monitor.notify import Notifier
from shipyard.monitor.settings import STATS, AlertRule, MonitorConfig
from shipyard.monitor.sla import SLAMonitor

log = logging.getLogger("shipyard.alerts")


def window_value(row: dict, metric: str) -> float | None:
    """A rule's metric from one deployment's health summary (None: no data in the window)."""
    series, _, stat = metric.rpartition("_")
    if stat in STATS and f"{series}_s" in row:
        return row[f"{series}_s"].get(stat)
    if metric == "error_rate":
        return row["error_rate"] if row["requests"] else None
    if metric in ("requests_per_s", "generation_tokens_per_s", "utilization"):
        return row[metric]
    live = row.get("live") or {}
    return {"queue_depth": live.get("waiting"), "kv_cache_usage": live.get("kv_cache_usage")}.get(metric)


class _Leader:
    """An flock on a file: held by one process at a time, released by the kernel when it dies."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def held(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MonitorService:
    def __init__(self, settings: MonitorConfig, health, engines, store: AlertStore, sla: SLAMonitor,
                 data_dir: Path, drift: DriftMonitor | None = None):
        self.settings = settings
        self.health = health  # HealthWindows
        self.engines = engines  # () -> {name: Engine}
        self.store = store
        self.sla = sla
        self.drift = drift
        self.book = AlertBook(settings.alerts.repeat_interval_s)
        self.anomaly = AnomalyDetector(settings.alerts.anomaly) if settings.alerts.anomaly.enabled else None
        self.notifier = Notifier(settings.alerts.webhooks, settings.alerts.external_url, self._delivered)
        self._announcing: set[asyncio.Task] = set()
        self._leader = _Leader(data_dir / "monitor-leader.lock")
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self.last_burn_rates: dict[str, list[dict]] = {}
        self.observers: list = []  # of finished requests (monitor/assembly.py fills these)
        self.workers: list = []  # background monitors with start() / stop()
        self.text_deployments: frozenset = frozenset()  # deployments whose prompt and answer text observers read
        self.clock = time.time

    # --- the request-path hook -------------------------------------------------------------
    def on_request_end(self, ended: RequestEnded) -> None:
        if self.anomaly is None:
            return
        deployment, tenant, status = ended.deployment, ended.tenant_id or "-", ended.status
        ttft_s, latency_s = ended.ttft_s, ended.latency_s
        metrics = self.settings.alerts.anomaly.metrics
        if "e2e" in metrics and status < 400:
            self.anomaly.observe(deployment, tenant, "e2e", latency_s)
        if "ttft" in metrics and ttft_s is not None:
            self.anomaly.observe(deployment, tenant, "ttft", ttft_s)
        if "error_rate" in metrics:
            self.anomaly.observe(deployment, tenant, "error_rate", 1.0 if status >= 500 else 0.0)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.notifier.start()
        for worker in self.workers:
            if hasattr(worker, "start"):  # some only run tasks when a request asks
                await worker.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for task in list(self._pending):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)
        await self.notifier.stop()
        for worker in self.workers:
            await worker.stop()
        self._leader.release()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.evaluation_interval_s)
            if self.health is not None:  # every process: its own engines
                self.health.sample_busy(self.engines())
            if not self._leader.held():
                if self.anomaly is not None:
                    self.anomaly.tick()  # another process evaluates: keep this one's sums bounded
                continue
            try:  # a frozen database must not stop the loop for good: the next evaluation runs
                await asyncio.wait_for(self.evaluate(), max(30.0, 4 * self.settings.evaluation_interval_s))
            except asyncio.TimeoutError:
                log.warning("alert evaluation timed out (the database or a drift comparison is slow)")
            except Exception:  # a failed evaluation is logged; the next one runs
                log.exception("alert evaluation failed")

    # --- evaluation ------------------------------------------------------------------------
    async def rules(self) -> list[AlertRule]:
        return [*self.settings.alerts.rules, *await self.store.rules()]

    async def evaluate(self) -> list[AlertEvent]:
        now = self.clock()
        events: list[AlertEvent] = []
        engines = self.engines()
        rules = await self.rules()
        gpus = await asyncio.to_thread(gpu_stats) if any(r.metric.startswith("gpu_") for r in rules) else []
        names = {rule.name for rule in rules}
        events += self.book.forget(lambda labels: labels.get("source") == "rule" and labels["alertname"] not in names)
        for rule in rules:
            deployments = [rule.deployment] if rule.deployment else sorted(engines)
            for deployment in deployments:
                events += evaluate_rule(self.book, rule, deployment, self._value(rule, deployment, gpus), now)
        events += self._anomalies(now)
        events += await self._burn_rates(now)
        events += await self._drift(now)
        if events:
            await self._publish(events)
        return events

    def _value(self, rule: AlertRule, deployment: str, gpus: list[dict]) -> float | None:
        if rule.metric.startswith("slo_burn_rate:"):
            rows = self.last_burn_rates.get(rule.metric.split(":", 1)[1])
            return rows[0]["long_burn_rate"] if rows else None
        if rule.metric in ("drift_share", "new_pattern_share", "gpu_memory_used_perc", "gpu_utilization_perc"):
            return self.extra_metrics(deployment, gpus).get(rule.metric)
        if self.health is None:
            return None
        rows = self.health.summary(rule.window_s, self.engines(), deployment)
        return window_value(rows[0], rule.metric) if rows else None

    def extra_metrics(self, deployment: str, gpus: list[dict]) -> dict[str, float]:
        """Metrics not in the windows: the GPUs' (the busiest one, read once per evaluation), and the
        deployment's drift."""
        figures = {}
        if gpus:
            figures["gpu_memory_used_perc"] = max(g["memory_used_perc"] for g in gpus)
            figures["gpu_utilization_perc"] = max(g["utilization_perc"] for g in gpus)
        report = self.drift.reports().get(deployment) if self.drift is not None else None
        if report is not None:
            figures.update(drift_share=report["drift_share"], new_pattern_share=report["new_patterns"]["share"])
        return figures

    def drift_families(self):
        """Prometheus gauges of each watched deployment's latest drift comparison."""
        share = GaugeMetricFamily("shipyard:drift_share", "Share of drifted descriptors (the larger of input "
                                  "and output)", labels=["model_name"])
        novel = GaugeMetricFamily("shipyard:new_pattern_share", "Share of recent requests that fit no reference "
                                  "cluster", labels=["model_name"])
        for deployment, report in (self.drift.reports() if self.drift is not None else {}).items():
            share.add_metric([deployment], report["drift_share"])
            novel.add_metric([deployment], report["new_patterns"]["share"])
        yield from (share, novel)

    async def _drift(self, now: float) -> list[AlertEvent]:
        """Built-in alerts: a deployment's traffic has drifted; a burst of requests unlike the reference."""
        if self.drift is None:
            return []
        events = []
        for deployment, report in (await self.drift.evaluate()).items():
            sides = [side for side in ("input", "output") if report[side]["drifted"]]
            labels = {"alertname": "DataDrift", "deployment": deployment, "source": "drift"}
            events += self.book.update(labels, "warning" if sides else None, report["drift_share"], now, 0.0,
                                       {"summary": f"{' and '.join(sides) or 'no'} drift on {deployment} "
                                                   f"(drifted descriptor share {report['drift_share']:.2f})"})
            novel = report["new_patterns"]
            labels = {"alertname": "NewPattern", "deployment": deployment, "source": "drift"}
            events += self.book.update(labels, "warning" if novel["alerting"] else None, novel["share"], now, 0.0,
                                       {"summary": f"{novel['share']:.0%} of the latest {novel['recent']} requests "
                                                   f"on {deployment} fit no reference cluster"})
        return events

    def _anomalies(self, now: float) -> list[AlertEvent]:
        if self.anomaly is None:
            return []
        events = []
        for d in self.anomaly.tick():
            deployment, tenant, metric = d.series
            labels = {"alertname": "LatencyAnomaly" if metric != "error_rate" else "ErrorRateAnomaly",
                      "deployment": deployment, "tenant": tenant, "metric": metric, "source": "anomaly"}
            if tenant == "-":
                labels.pop("tenant")
            summary = (f"{metric} is {d.value:.4g} against an expected {d.expected:.4g} (z = {d.z:.1f}) "
                       f"on {deployment}")
            events += self.book.update(labels, "warning" if d.anomalous else None, d.value, now, 0.0,
                                       {"summary": summary, "z": f"{d.z:.2f}"})
        return events

    async def _burn_rates(self, now: float) -> list[AlertEvent]:
        events = []
        for slo in self.sla.slos.values():
            rows = self.last_burn_rates[slo.name] = await self.sla.burn_rates(slo)
            for row in rows:
                labels = {"alertname": f"SLOBurnRate:{slo.name}", "slo": slo.name, "window": row["window"],
                          "deployment": slo.deployment or "*", "source": "slo"}
                summary = (f"SLO {slo.name} burns its error budget at {row['long_burn_rate']:.1f}× over "
                           f"{row['window'].split('/')[0]} ({row['bad']} bad of {row['requests']})")
                events += self.book.update(labels, row["severity"] if row["alerting"] else None,
                                           row["long_burn_rate"], now, 0.0, {"summary": summary})
        return events

    def announce(self, alertname: str, labels: dict[str, str], summary: str, severity: str = "info") -> None:
        """A one-off notification (an experiment's transition): kept in the alert history and sent to
        the webhooks like an alert, from whichever process made it."""
        event = AlertEvent("firing", {"alertname": alertname, "severity": severity, **labels}, {"summary": summary},
                           None, time.time())
        task = asyncio.create_task(self._publish([event]))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _publish(self, events: list[AlertEvent]) -> None:
        ids = await self.store.record(events)
        for event, row_id in zip(events, ids):
            event.row_id = row_id
            log.warning("alert %s %s: %s", event.status, event.labels.get("alertname"),
                        event.annotations.get("summary", ""))
            self.notifier.send(event)

    def _delivered(self, hook, event: AlertEvent, ok: bool, attempts: int) -> None:
        row_id = getattr(event, "row_id", None)
        if row_id is not None:
            task = asyncio.create_task(self.store.delivered(row_id, ok))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
