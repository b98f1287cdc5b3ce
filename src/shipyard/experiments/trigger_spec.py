"""Retraining triggers as configured: a condition, a debounce, a cooldown and an action.

```yaml
retraining:
  interval_s: 60
  triggers:
    - name: thumbs-dropping
      metric: {score: feedback.thumbs, deployment: chat, below: 0.7, window_s: 3600, min_samples: 50}
      debounce: {m: 3, n: 5}        # 3 of the last 5 evaluations must hold
      cooldown_s: 86400
      action: {webhook: {url: "https://ci.example/retrain", secret_env: RETRAIN_HMAC}}
```

A trigger has exactly one condition: `schedule` (a cron expression), `metric` (a score's mean over
a window below or above a threshold), `drift` (the drift monitor's drifted share above a
tolerance) or `feedback_count` (feedback since the trigger last fired reaching a count). Its
action is a signed webhook or a command.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.experiments.spec import Name
from shipyard.monitor.scores import NAME_PATTERN
from shipyard.monitor.settings import Webhook


class ScheduleCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    cron: str = Field(description="five fields, UTC (e.g. '0 3 * * 1': Mondays at 03:00)")

    @model_validator(mode="after")
    def _valid(self) -> ScheduleCondition:
        from croniter import croniter

        if not croniter.is_valid(self.cron) or len(self.cron.split()) != 5:
            raise ValueError(f"'{self.cron}' is not a five-field cron expression")
        return self


class MetricCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    score: str = Field(pattern=NAME_PATTERN, description="a score's name: feedback.thumbs, a monitor's, an eval's")
    deployment: str | None = Field(None, description="only this deployment's scores (default: all)")
    below: float | None = None
    above: float | None = None
    window_s: float = Field(3600.0, gt=0, description="the scores of the last this many seconds")
    min_samples: int = Field(30, ge=1, description="fewer scores in the window: no data, the condition is unknown")

    @model_validator(mode="after")
    def _one_bound(self) -> MetricCondition:
        if (self.below is None) == (self.above is None):
            raise ValueError("give one of below and above")
        return self


class DriftCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    deployment: str
    above: float = Field(0.5, ge=0, le=1, description="the tolerance: the share of drifted descriptors")


class FeedbackCountCondition(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    at_least: int = Field(ge=1, description="this many pieces of feedback since the trigger last fired")
    metric: str | None = Field(None, pattern=NAME_PATTERN, description="one feedback metric (default: any)")
    deployment: str | None = None


class Debounce(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    m: int = Field(1, ge=1)
    n: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _m_of_n(self) -> Debounce:
        if self.m > self.n:
            raise ValueError("m is at most n")
        return self


class CommandAction(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    argv: list[str] = Field(min_length=1, description="run without a shell; the payload comes on stdin")
    timeout_s: float = Field(600.0, gt=0, le=86400, description="killed past this")


class TriggerAction(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    webhook: Webhook | None = Field(None, description="POSTed, HMAC-signed (a secret is required), retried")
    command: CommandAction | None = None

    @model_validator(mode="after")
    def _one(self) -> TriggerAction:
        if (self.webhook is None) == (self.command is None):
            raise ValueError("give one of webhook and command")
        if self.webhook is not None and not (self.webhook.secret or self.webhook.secret_env):
            raise ValueError("a trigger's webhook is signed: give secret_env (or secret)")
        return self


class TriggerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Name
    schedule: ScheduleCondition | None = None
    metric: MetricCondition | None = None
    drift: DriftCondition | None = None
    feedback_count: FeedbackCountCondition | None = None
    debounce: Debounce = Debounce()
    cooldown_s: float = Field(3600.0, ge=0, description="after firing, not again for this long")
    action: TriggerAction

    @model_validator(mode="after")
    def _one_condition(self) -> TriggerSpec:
        if sum(c is not None for c in (self.schedule, self.metric, self.drift, self.feedback_count)) != 1:
            raise ValueError("give exactly one of schedule, metric, drift and feedback_count")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("schedule", "metric", "drift", "feedback_count") if getattr(self, k) is not None)


class RetrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    interval_s: float = Field(60.0, gt=0, description="how often every trigger is evaluated")
    triggers: list[TriggerSpec] = Field(default_factory=list)
    external_url: str = Field("http://127.0.0.1:8000", description="where a payload's data links point")

    @model_validator(mode="after")
    def _unique(self) -> RetrainingConfig:
        names = [t.name for t in self.triggers]
        if len(set(names)) != len(names):
            raise ValueError("trigger names must differ")
        return self
