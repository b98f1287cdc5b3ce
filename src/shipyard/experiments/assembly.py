"""Putting one gateway process's continuous-improvement parts together, from the config: the
experiments registry, shadow copies, canary analysis, implicit feedback, the review queue and the
retraining triggers. They observe the request path through its one observer hook and hear
experiment transitions through the registry's listeners."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from shipyard.experiments.canary import CanaryController
from shipyard.experiments.implicit import ImplicitFeedback
from shipyard.experiments.registry import ExperimentRegistry
from shipyard.experiments.replay import Replayer
from shipyard.experiments.review import ReviewQueue
from shipyard.experiments.shadow import ShadowRunner
from shipyard.experiments.triggers import RetrainingTriggers
from shipyard.hooks import RequestHooks


@dataclass
class Improvement:
    experiments: ExperimentRegistry
    shadow: ShadowRunner
    canary: CanaryController
    review: ReviewQueue
    triggers: RetrainingTriggers
    replays: Replayer
    observers: list = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def running(self):
        await self.experiments.start()
        await self.shadow.start()
        await self.canary.start()
        await self.review.start()
        await self.triggers.start()
        try:
            yield
        finally:
            await self.replays.stop()
            await self.triggers.stop()
            await self.review.stop()
            await self.canary.stop()
            await self.shadow.stop()
            await self.experiments.stop()


def build_improvement(config, db, router, gateway, score_writer, monitor, hooks: RequestHooks) -> Improvement:
    experiments = ExperimentRegistry(db, config.experiments, lambda: set(router.engines()))
    def cost_of(name, prompt, completion, compute_s):
        return gateway.cost_of(name, prompt, completion, 0, None, compute_s)

    shadow = ShadowRunner(router.engines, experiments, score_writer, db, cost_of)
    replays = Replayer(router.engines, score_writer, db, cost_of, shadow.comparer)
    canary = CanaryController(experiments, db, config.canary_interval_s,
                              feedback_min_tenants=config.feedback.min_tenants)
    review = ReviewQueue(config.review, db)
    drift = monitor.drift if monitor is not None else None
    triggers = RetrainingTriggers(config.retraining, db,
                                  drift_of=(lambda name: drift.reports().get(name)) if drift is not None else None,
                                  feedback_min_tenants=config.feedback.min_tenants)
    if monitor is not None:
        experiments.listeners.append(lambda name, kind, actor, detail: monitor.announce(
            "ExperimentTransition", {"experiment": name, "transition": kind},
            f"experiment {name}: {kind} by {actor}" + (f" ({detail['reason']})" if detail.get("reason") else ""),
            "critical" if kind == "rollback" else "info"))
    observers = [shadow, ImplicitFeedback(score_writer, config.feedback.implicit_window_s)]
    if config.review.enabled:
        observers.append(review)
    hooks.finished.extend(observers)
    return Improvement(experiments, shadow, canary, review, triggers, replays, observers)


def review_text_deployments(config) -> frozenset:
    """The deployments whose answers' text the review queue needs (kept only for queued ones)."""
    if not config.review.enabled:
        return frozenset()
    return frozenset(config.review.deployments if config.review.deployments is not None else config.deployments)
