"""The decision report: does the challenger beat the champion, with evidence that survives peeking?

Three kinds of evidence, each analysed as it is:

- **served**: the requests each arm answered (A/B, canary): two independent streams per metric —
  error rate, latency, TTFT, cost — and thumbs;
- **mirrored**: shadow and champion-challenger copies: the same live input answered by both, so each
  metric is a paired difference (challenger − champion), and the pair's agreement (MiniLM cosine,
  exact match) is summarised;
- **replay**: a stored dataset sent to both arms (experiments/replay.py): paired, like mirrored, plus
  each answer's similarity to the dataset's reference answer when it has one.

Every metric is an mSPRT over its whole history in arrival order (statistics.sequential_history):
the p-value and interval are always valid however often the report was read before. Effect sizes
are the difference, the relative change and the standardized effect (Cohen's d; d_z when paired).
Thumbs get Beta-Binomial probability-to-be-best and expected loss. An A/B split is gated by the
sample-ratio χ²: a mismatch means the assignment is broken, and nothing else is trusted.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.statistics import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_SAMPLES,
    beta_binomial,
    sample_ratio,
    sequential_history,
)
from shipyard.store.models import Score, ShadowRecord, UsageRecord

REPLAY_PREFIX = "replay-"
MAX_ROWS = 200_000
# (metric, higher is better) for what both arms measure on every request
REQUEST_METRICS = (("error_rate", False), ("latency_ms", False), ("ttft_ms", False), ("cost_usd", False))


def _effect_size(champion: np.ndarray, challenger: np.ndarray | None, differences: np.ndarray | None) -> float | None:
    if differences is not None:
        sd = float(np.std(differences, ddof=1)) if len(differences) > 1 else 0.0
        return float(np.mean(differences)) / sd if sd > 0 else None
    if len(champion) < 2 or len(challenger) < 2:
        return None
    pooled = float(np.sqrt((np.var(champion, ddof=1) + np.var(challenger, ddof=1)) / 2))
    return float(np.mean(challenger) - np.mean(champion)) / pooled if pooled > 0 else None


def _view(result, higher_is_better: bool, effect_size: float | None) -> dict:
    return {"metric": result.metric, "higher_is_better": higher_is_better, "n": list(result.n),
            "means": list(result.means), "effect": result.effect, "relative": result.relative,
            "effect_size": effect_size, "interval": list(result.interval) if result.interval else None,
            "p_value": result.p_value, "decision": result.decision}


def two_streams(metric: str, higher_is_better: bool, observations: list[tuple[int, float]], alpha: float,
                min_samples: int) -> dict:
    """(arm, value) in arrival order, arm 0 the champion."""
    arms = np.array([a for a, _ in observations], dtype=int)
    values = np.array([v for _, v in observations], dtype=float)
    result = sequential_history(arms, values, higher_is_better, False, metric, alpha, min_samples=min_samples)
    return _view(result, higher_is_better, _effect_size(values[arms == 0], values[arms == 1], None))


def paired(metric: str, higher_is_better: bool, pairs: list[tuple[float, float]], alpha: float,
           min_samples: int) -> dict:
    """(champion, challenger) on the same input, in arrival order."""
    champion = np.array([a for a, _ in pairs], dtype=float)
    differences = np.array([b - a for a, b in pairs], dtype=float)
    result = sequential_history(champion, differences, higher_is_better, True, metric, alpha, min_samples=min_samples)
    return {**_view(result, higher_is_better, _effect_size(champion, None, differences)), "paired": True}


def recommend(sections: dict, ratio: dict | None, thumbs: dict | None) -> dict:
    """promote, keep_champion, continue (not enough evidence yet) or investigate (broken split)."""
    if ratio is not None and ratio["mismatch"]:
        return {"action": "investigate", "reasons": [f"sample-ratio mismatch (p={ratio['p_value']:.2g}): the "
                                                     "split does not match the weights; no result can be trusted"]}
    metrics = [(name, m) for name, section in sections.items() for m in section["metrics"]]
    worse = [f"{name}: {m['metric']} worse ({m['effect']:+.4g}, p={m['p_value']:.2g})"
             for name, m in metrics if m["decision"] == "challenger_worse"]
    if worse:
        return {"action": "keep_champion", "reasons": worse}
    better = [f"{name}: {m['metric']} better ({m['effect']:+.4g}, p={m['p_value']:.2g})"
              for name, m in metrics if m["decision"] == "challenger_better"]
    if thumbs is not None and thumbs["best"] == 1:
        better.append(f"thumbs: the challenger is best with probability {thumbs['probability_best'][1]:.3f}")
    if better:
        return {"action": "promote", "reasons": better}
    short = [f"{name}: {m['metric']} has {min(m['n'])} of {m['min_samples']} per arm"
             for name, m in metrics if m["decision"] == "too_few"]
    return {"action": "continue", "reasons": short or ["no difference yet: keep collecting (always-valid, "
                                                       "so looking again later is safe)"]}


async def _served(session, spec: ExperimentSpec) -> list[tuple]:
    """(arm, status, latency, ttft, cost) of each request the first two arms served, in arrival order."""
    variants = {f"{spec.name}/{arm.name}": i for i, arm in enumerate(spec.arms[:2])}
    rows = (await session.execute(
        select(UsageRecord.variant, UsageRecord.status, UsageRecord.latency_ms, UsageRecord.ttft_ms,
               UsageRecord.cost_usd)
        .where(UsageRecord.variant.in_(variants)).order_by(UsageRecord.created_at, UsageRecord.id)
        .limit(MAX_ROWS))).all()
    return [(variants[variant], *rest) for variant, *rest in rows]


async def _thumbs(session, spec: ExperimentSpec) -> tuple[list[int], list[int]]:
    variants = {f"{spec.name}/{arm.name}": i for i, arm in enumerate(spec.arms[:2])}
    rows = (await session.execute(
        select(UsageRecord.variant, Score.boolean).join(Score, Score.request_id == UsageRecord.request_id)
        .where(UsageRecord.variant.in_(variants), Score.name == "feedback.thumbs", Score.kind == "boolean"))).all()
    ups, downs = [0, 0], [0, 0]
    for variant, value in rows:
        (ups if value else downs)[variants[variant]] += 1
    return ups, downs


def request_values(status: int, latency: float, ttft: float | None, cost: float) -> dict[str, float]:
    """What one request contributes to each request metric: every request its error; an answered
    one its latency, cost and (when measured) TTFT."""
    values = {"error_rate": float(status >= 500)}
    if status < 400:
        values.update(latency_ms=latency, cost_usd=cost)
        if ttft is not None:
            values["ttft_ms"] = ttft
    return values


def _request_pairs(rows: list[tuple]) -> dict[str, list[tuple[float, float]]]:
    """(champion, challenger) per request metric, from rows (status, latency, ttft, cost) × 2: a pair
    counts for a metric where both sides have a value."""
    pairs: dict[str, list] = defaultdict(list)
    for row in rows:
        champion, challenger = request_values(*row[:4]), request_values(*row[4:])
        for metric in champion.keys() & challenger.keys():
            pairs[metric].append((champion[metric], challenger[metric]))
    return pairs


async def _mirrored(session, spec: ExperimentSpec) -> list[tuple]:
    challenger = spec.arms[1]
    return (await session.execute(
        select(UsageRecord.status, UsageRecord.latency_ms, UsageRecord.ttft_ms, UsageRecord.cost_usd,
               ShadowRecord.status, ShadowRecord.latency_ms, ShadowRecord.ttft_ms, ShadowRecord.cost_usd)
        .join(UsageRecord, UsageRecord.request_id == ShadowRecord.request_id)
        .where(ShadowRecord.experiment == spec.name, ShadowRecord.arm == challenger.name)
        .order_by(ShadowRecord.created_at, ShadowRecord.id).limit(MAX_ROWS))).all()


async def _replayed(session, spec: ExperimentSpec) -> list[tuple]:
    a, b = aliased(ShadowRecord), aliased(ShadowRecord)
    return (await session.execute(
        select(a.status, a.latency_ms, a.ttft_ms, a.cost_usd, b.status, b.latency_ms, b.ttft_ms, b.cost_usd)
        .join(b, and_(b.request_id == a.request_id, b.experiment == spec.name, b.arm == spec.arms[1].name))
        .where(a.experiment == spec.name, a.arm == spec.arms[0].name, a.request_id.like(f"{REPLAY_PREFIX}%"))
        .order_by(a.created_at, a.id).limit(MAX_ROWS))).all()


async def _score_means(session, spec: ExperimentSpec, names: tuple[str, ...]) -> dict[str, dict]:
    """The mean of each pair-agreement score of this experiment's copies and replays."""
    rows = (await session.execute(
        select(Score.name, Score.numeric).join(ShadowRecord, ShadowRecord.request_id == Score.request_id)
        .where(ShadowRecord.experiment == spec.name, ShadowRecord.arm == spec.arms[1].name,
               Score.deployment == spec.arms[1].deployment, Score.name.in_(names)).limit(MAX_ROWS))).all()
    values: dict[str, list[float]] = defaultdict(list)
    for name, value in rows:
        if value is not None:
            values[name].append(value)
    return {name: {"n": len(v), "mean": float(np.mean(v))} for name, v in values.items()}


async def _reference_pairs(session, spec: ExperimentSpec) -> list[tuple[float, float]]:
    """Each replayed input's similarity to the reference answer, (champion, challenger)."""
    rows = (await session.execute(
        select(Score.request_id, Score.deployment, Score.numeric)
        .where(Score.name == "replay.reference_cosine", Score.request_id.like(f"{REPLAY_PREFIX}{spec.name}-%"))
        .order_by(Score.id).limit(MAX_ROWS))).all()
    by_request: dict[str, dict[str, float]] = defaultdict(dict)
    for request_id, deployment, value in rows:
        if request_id.startswith(f"{REPLAY_PREFIX}{spec.name}-"):  # LIKE's `_` matches any character
            by_request[request_id][deployment] = value
    champion, challenger = spec.arms[0].deployment, spec.arms[1].deployment
    return [(v[champion], v[challenger]) for v in by_request.values() if champion in v and challenger in v]


async def decision_report(db, spec: ExperimentSpec, alpha: float = DEFAULT_ALPHA,
                          min_samples: int = DEFAULT_MIN_SAMPLES) -> dict:
    sections: dict[str, dict] = {}
    async with db.session() as session:
        served = await _served(session, spec)
        ups, downs = await _thumbs(session, spec)
        mirrored = await _mirrored(session, spec)
        replayed = await _replayed(session, spec)
        agreement = await _score_means(session, spec, ("shadow.cosine", "shadow.exact_match", "shadow.length_ratio"))
        reference = await _reference_pairs(session, spec)
    ratio = None
    counts = [sum(1 for row in served if row[0] == arm) for arm in (0, 1)]
    if min(counts) > 0:
        observations = defaultdict(list)
        for arm, *request in served:
            for metric, value in request_values(*request).items():
                observations[metric].append((arm, value))
        sections["served"] = {"requests": counts, "metrics": [
            two_streams(name, higher, observations[name], alpha, min_samples) for name, higher in REQUEST_METRICS]}
        if spec.mode == "ab":
            weights = spec.serving_weights()[:2]
            check = sample_ratio(counts, weights)
            ratio = {"p_value": check.p_value, "mismatch": check.mismatch, "expected_shares": check.expected_shares}
    for name, rows in (("mirrored", mirrored), ("replay", replayed)):
        if rows:
            pairs = _request_pairs(rows)
            metrics = [paired(metric, higher, pairs[metric], alpha, min_samples)
                       for metric, higher in REQUEST_METRICS if pairs.get(metric)]
            sections[name] = {"pairs": len(rows), "metrics": metrics}
    if reference:
        sections.setdefault("replay", {"pairs": 0, "metrics": []})["metrics"].append(paired("reference_cosine", True, reference, alpha, min_samples))
    for section in sections.values():
        for metric in section["metrics"]:
            metric["min_samples"] = min_samples
    thumbs = None
    if sum(ups) + sum(downs) > 0:
        verdict = beta_binomial(ups, downs, min_samples=min_samples)
        thumbs = {"ups": ups, "downs": downs, "rates": verdict.rates, "probability_best": verdict.probability_best,
                  "expected_loss": verdict.expected_loss, "best": verdict.best}
    return {"object": "experiment.report", "experiment": spec.name, "mode": spec.mode, "status": spec.status,
            "arms": [{"name": a.name, "deployment": a.deployment} for a in spec.arms[:2]],
            "alpha": alpha, "min_samples": min_samples, "sample_ratio": ratio, "sections": sections,
            "thumbs": thumbs, "agreement": agreement, "recommendation": recommend(sections, ratio, thumbs)}
