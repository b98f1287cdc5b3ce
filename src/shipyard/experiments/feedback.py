"""Feedback on responses: the metrics a deployment collects, and what a client sends.

`POST /v1/feedback` {response_id, metric, value, comment, tags}: the response must be one the
caller's tenant received (another tenant's is as unknown as a missing one: 404). Metrics are
declared in config with a type and a direction; a boolean `thumbs` (higher is better) always
exists. Each piece of feedback lands in the score store as `feedback.<metric>` (source
`feedback`), next to the monitors' and evaluators' scores of the same request, where experiments
read it.

What a tenant's feedback may move: each key has one vote per response and metric (a new one
replaces the last), sends at most `max_per_minute` pieces a minute (each also one of its
requests per minute), and global decisions (retraining triggers, experiments open to every
tenant) read feedback only once `min_tenants` tenants sent some: one tenant alone cannot fire a
trigger or roll back a canary that every tenant shares.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from shipyard.monitor.scores import NAME_PATTERN, ScoreIn

MAX_TEXT = 20_000  # a comment or a demonstration (the answer the user wanted)


def is_feedback(score_name: str) -> bool:
    """A score a tenant's users send (explicit feedback or an implicit signal)."""
    return score_name.startswith(("feedback.", "implicit."))


class FeedbackMetric(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["boolean", "float", "comment", "demonstration"]
    direction: Literal["higher", "lower"] = Field("higher", description="which way is better (boolean: true)")
    minimum: float | None = Field(None, description="float: the lowest value accepted")
    maximum: float | None = Field(None, description="float: the highest value accepted")


class FeedbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    metrics: dict[str, FeedbackMetric] = Field(default_factory=dict, description="besides thumbs (boolean)")
    implicit_window_s: float = Field(120.0, ge=0, le=86400, description="a user's next request within this "
                                     "marks the previous answer regenerated (same prompt) or followed up (0: off)")
    max_per_minute: int = Field(60, ge=1, le=100_000, description="feedback calls per minute per API key (each "
                                "also takes one of the key's and tenant's requests per minute)")
    min_tenants: int = Field(2, ge=1, le=1000, description="a global decision (a retraining trigger, an experiment "
                             "open to every tenant) moves on feedback only when this many tenants sent it: one "
                             "tenant's votes move only its own")

    @model_validator(mode="after")
    def _thumbs(self) -> FeedbackConfig:
        self.metrics.setdefault("thumbs", FeedbackMetric(type="boolean"))
        return self


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    response_id: str | None = Field(None, min_length=1, max_length=160,
                                    description="the id of a chat or completion response")
    episode_id: str | None = Field(None, min_length=1, max_length=200,
                                   description="instead: the episode (x-shipyard-episode-id); its latest response")
    metric: str | None = Field(None, pattern=NAME_PATTERN)
    event: Literal["accepted"] | None = Field(None, description="instead of a metric: an implicit signal "
                                              "(accepted: the user kept or used the answer)")
    value: StrictBool | StrictInt | StrictFloat | StrictStr | None = None
    comment: str | None = Field(None, max_length=MAX_TEXT)
    tags: list[str] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _tags(self) -> FeedbackIn:
        if any(not 1 <= len(tag) <= 64 for tag in self.tags):
            raise ValueError("a tag is 1 to 64 characters")
        if (self.response_id is None) == (self.episode_id is None):
            raise ValueError("give one of response_id and episode_id")
        if (self.metric is None) == (self.event is None):
            raise ValueError("give one of metric and event")
        return self


class InvalidFeedback(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def to_score(body: FeedbackIn, config: FeedbackConfig) -> ScoreIn:
    """The score this feedback becomes, its value checked against the metric's declared type."""
    if body.event is not None:  # an implicit signal, beside regenerate and follow-up (implicit.py)
        return ScoreIn(request_id=body.response_id or "episode", name=f"implicit.{body.event}", value=1.0,
                       source="api", comment=body.comment)
    metric = config.metrics.get(body.metric)
    if metric is None:
        raise InvalidFeedback(f"Unknown feedback metric '{body.metric}'; this server collects: "
                              f"{', '.join(sorted(config.metrics))}.", "metric")
    value, comment = body.value, body.comment
    if metric.type == "boolean":
        if not isinstance(value, bool):
            raise InvalidFeedback(f"'{body.metric}' takes true or false.", "value")
    elif metric.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidFeedback(f"'{body.metric}' takes a finite number.", "value")
        if (metric.minimum is not None and value < metric.minimum) or \
                (metric.maximum is not None and value > metric.maximum):
            raise InvalidFeedback(f"'{body.metric}' takes a number from {metric.minimum} to {metric.maximum}.",
                                  "value")
        value = float(value)
    else:  # comment, demonstration: the text is the feedback
        text = value if isinstance(value, str) else comment
        if not isinstance(text, str) or not text.strip():
            raise InvalidFeedback(f"'{body.metric}' takes a text.", "value")
        if len(text) > MAX_TEXT:
            raise InvalidFeedback(f"'{body.metric}' is at most {MAX_TEXT} characters.", "value")
        value, comment = metric.type, text
    return ScoreIn(request_id=body.response_id or "episode", name=f"feedback.{body.metric}", value=value, source="api",
                   comment=comment[:MAX_TEXT] if comment else None)
