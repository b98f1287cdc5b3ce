"""Putting one gateway process's monitors together: the alerting service, and the observers of
finished requests (confidence, drift, consistency, faithfulness), from the `monitor:` settings."""

from __future__ import annotations

from pathlib import Path

from shipyard.hooks import RequestHooks
from shipyard.monitor.alert_store import AlertStore
from shipyard.monitor.confidence import ConfidenceMonitor
from shipyard.monitor.consistency import ConsistencyMonitor
from shipyard.monitor.drift import DriftMonitor
from shipyard.monitor.faithfulness import FaithfulnessMonitor
from shipyard.monitor.scores import ScoreWriter
from shipyard.monitor.service import MonitorService
from shipyard.monitor.settings import MonitorConfig
from shipyard.monitor.sla import SLAMonitor


def build_monitor(settings: MonitorConfig, metrics, router, db, data_dir: Path,
                  score_writer: ScoreWriter, hooks: RequestHooks) -> MonitorService:
    """The monitors, listening to the request path through its hooks (request ends, finished
    requests)."""
    drift = DriftMonitor(settings.drift) if settings.drift.deployments else None
    monitor = MonitorService(settings, metrics.health, router.engines, AlertStore(db), SLAMonitor(db, settings.slos),
                             data_dir, drift)
    hooks.ended.append(monitor.on_request_end)
    # The raw engines, past the caches: a consistency sample must really be generated again.
    consistency = ConsistencyMonitor(settings.consistency, router.engines, score_writer)
    monitor.observers = [ConfidenceMonitor(score_writer), consistency]
    monitor.workers = [consistency]
    if drift is not None:
        metrics.gauge_sources.append(monitor.drift_families)
        monitor.observers.append(drift)
        monitor.workers.append(drift)
    if settings.faithfulness.model_path:
        faithfulness = FaithfulnessMonitor(settings.faithfulness, score_writer)
        monitor.observers.append(faithfulness)
        monitor.workers.append(faithfulness)
    monitor.text_deployments = frozenset(settings.drift.deployments) | frozenset(settings.consistency.deployments)
    hooks.finished.extend(monitor.observers)
    return monitor
