"""Confidence scores of every answer, from what the engine's sampler measured at no extra
forward: the mean and the minimum of the chosen tokens' logprobs, and the mean entropy of the
distributions they were drawn from. Low values flag answers the model was unsure of (the
cheapest hallucination signal). Written to the score store as `monitor` scores."""

from __future__ import annotations

from shipyard.monitor.scores import ScoreWriter


def combine(per_choice: list[dict]) -> dict[str, float] | None:
    """One request's figures over all its choices, weighted by their tokens."""
    tokens = sum(c["tokens"] for c in per_choice)
    if not tokens:
        return None
    return {"mean_logprob": sum(c["mean_logprob"] * c["tokens"] for c in per_choice) / tokens,
            "min_logprob": min(c["min_logprob"] for c in per_choice),
            "mean_entropy": sum(c["mean_entropy"] * c["tokens"] for c in per_choice) / tokens}


class ConfidenceMonitor:
    """Observes finished requests (an observer of the api's request path) and scores them."""

    def __init__(self, writer: ScoreWriter):
        self.writer = writer

    def __call__(self, finished) -> None:
        if finished.status != 200 or not finished.confidence:
            return
        figures = combine(finished.confidence)
        if figures is not None:
            self.writer.record(finished.request_id, finished.tenant_id, finished.deployment, figures)
