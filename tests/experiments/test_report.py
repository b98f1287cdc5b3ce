"""The decision report on a real SQLite store with known effects: an A/B test whose challenger is
slower and fails more is a "keep the champion" with the failing metrics named; an equal one stays
"continue"; a split that does not match its weights is "investigate"; thumbs get their
probability to be best; every metric carries its effect size and an always-valid interval."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from experiments_support import db  # noqa: F401 (a fixture)
from shipyard.experiments.report import decision_report
from shipyard.experiments.spec import ExperimentSpec
from shipyard.store.models import Score, UsageRecord

START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _spec(name: str) -> ExperimentSpec:
    return ExperimentSpec(name=name, model="chat", mode="ab", arms=[
        {"name": "champion", "deployment": "chat", "weight": 1}, {"name": "challenger", "deployment": "chat-v2",
                                                                 "weight": 1}])


async def _traffic(db, name: str, counts: tuple[int, int], latency: tuple[float, float],
                   error_rate: tuple[float, float], thumbs_up: tuple[float, float] | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, scores = [], []
    arms = [0] * counts[0] + [1] * counts[1]
    rng.shuffle(arms)
    for i, arm in enumerate(arms):
        failed = rng.random() < error_rate[arm]
        request_id = f"{name}-{i}"
        rows.append(UsageRecord(request_id=request_id, tenant_id="t", key_id="k", model=("chat", "chat-v2")[arm],
                                variant=f"{name}/{('champion', 'challenger')[arm]}", status=500 if failed else 200,
                                latency_ms=float(rng.lognormal(np.log(latency[arm]), 0.3)),
                                ttft_ms=float(rng.lognormal(np.log(latency[arm] / 4), 0.3)), cost_usd=0.001,
                                created_at=START + timedelta(seconds=i)))
        if thumbs_up is not None and not failed:
            scores.append(Score(request_id=request_id, tenant_id="t", deployment="chat", name="feedback.thumbs",
                                kind="boolean", boolean=bool(rng.random() < thumbs_up[arm]), source="feedback",
                                created_at=START + timedelta(seconds=i)))
    async with db.session() as session:
        session.add_all(rows + scores)
        await session.commit()


async def test_a_slower_failing_challenger_is_kept_out(db):
    await _traffic(db, "worse", (600, 600), latency=(200.0, 260.0), error_rate=(0.01, 0.08))
    report = await decision_report(db, _spec("worse"))
    served = {m["metric"]: m for m in report["sections"]["served"]["metrics"]}
    assert report["sections"]["served"]["requests"] == [600, 600]
    assert served["latency_ms"]["decision"] == "challenger_worse" and served["error_rate"]["decision"] == "challenger_worse"
    latency = served["latency_ms"]
    assert latency["interval"][0] < latency["effect"] < latency["interval"][1] and latency["interval"][0] > 0
    assert 0.2 < latency["relative"] < 0.4 and latency["effect_size"] > 0.5
    assert served["cost_usd"]["decision"] == "inconclusive"  # the same price on both arms
    assert report["recommendation"]["action"] == "keep_champion"
    assert any("latency_ms worse" in reason for reason in report["recommendation"]["reasons"])
    assert report["sample_ratio"]["mismatch"] is False


async def test_equal_arms_continue_and_thumbs_name_the_likely_best(db):
    await _traffic(db, "equal", (300, 300), latency=(200.0, 200.0), error_rate=(0.02, 0.02),
                   thumbs_up=(0.6, 0.8), seed=3)
    report = await decision_report(db, _spec("equal"), min_samples=50)
    served = {m["metric"]: m for m in report["sections"]["served"]["metrics"]}
    assert served["latency_ms"]["decision"] == "inconclusive" and served["latency_ms"]["p_value"] > 0.05
    thumbs = report["thumbs"]
    assert thumbs["probability_best"][1] > 0.99 and thumbs["best"] == 1
    assert report["recommendation"]["action"] == "promote"  # better thumbs, worse on nothing
    few = await decision_report(db, _spec("equal"), min_samples=1000)
    assert few["recommendation"]["action"] == "continue" and "of 1000 per arm" in few["recommendation"]["reasons"][0]


async def test_a_broken_split_is_investigated_before_anything_else(db):
    await _traffic(db, "skewed", (700, 300), latency=(200.0, 300.0), error_rate=(0.0, 0.0))
    report = await decision_report(db, _spec("skewed"))
    assert report["sample_ratio"]["mismatch"] is True
    assert report["recommendation"]["action"] == "investigate"
