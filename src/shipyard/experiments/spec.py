"""An experiment: a mode over deployments, arms with weights, and sticky assignment.

Clients keep sending the same model name (`model`, a deployment: usually the champion's); while
the experiment runs, each request is assigned an arm, and the arm's deployment answers it. The
first arm is the champion. Which arm serves a request is decided by the mode and status:

| mode | who serves (running) |
|---|---|
| `ab` | the arms by their weights |
| `canary` | the challenger gets its current weight (the canary step), the champion the rest |
| `shadow`, `champion_challenger` | the champion; the challenger sees copies of the requests |

`paused` freezes the split where it is (no automatic step, no copies); `promoted` sends every
request to the promoted arm; `rolled_back` to the champion.

Assignment is sticky: the unit (the request's episode id, else its `user`, else the API key) is
hashed with the experiment's salt to a point in [0, 1), and the arms own consecutive slices of
that interval in order. A unit stays on its arm while the weights stand; as a canary grows, the
units it already has stay on it (its slice only widens).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Mode = Literal["shadow", "canary", "ab", "champion_challenger"]
Status = Literal["running", "paused", "promoted", "rolled_back"]
SCALE = float(1 << 64)


def _valid_name(value: str) -> str:
    if not NAME.match(value):
        raise ValueError("letters, digits, '.', '_' or '-', at most 64")
    return value


Name = Annotated[str, AfterValidator(_valid_name)]


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Name = Field(description="the arm's name (champion, challenger, b, ...)")
    deployment: str = Field(description="the deployment that serves this arm")
    weight: float = Field(1.0, ge=0, le=1_000_000, description="share of the traffic (ab; canary: set by its steps)")


class ShadowSettings(BaseModel):
    """How a shadow (or champion-challenger) experiment copies requests to the challenger."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sample: float = Field(1.0, ge=0, le=1, description="share of the champion's requests copied")
    max_concurrent: int = Field(4, ge=1, le=1024, description="copies in flight at once; more are shed")
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="a copy's completion length at most")
    compare_sample: float = Field(0.1, ge=0, le=1, description="share of answered pairs also compared by "
                                  "embedding (MiniLM cosine); exact match and length ratio are always kept")
    daily_tokens: int | None = Field(None, ge=1, le=10**15, description="copies stop for the day (UTC) past this many tokens")
    daily_cost_usd: float | None = Field(None, gt=0, le=1e9, description="copies stop for the day past this cost")


class CanarySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    steps: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.25, 0.5, 1.0], min_length=1, max_length=100,
                               description="the canary's share at each step, each in (0, 1] and rising; after "
                               "the last it is promoted")
    min_requests: int = Field(100, ge=1, le=10**9, description="per arm at a step before any decision")
    step_min_s: float = Field(60.0, ge=0, le=365 * 86400, description="time at a step before it may advance")
    max_error_rate_delta: float = Field(0.02, ge=0, le=1)
    max_latency_ratio: float = Field(1.5, gt=0, le=1e6, description="canary P95 latency and TTFT ÷ the champion's")
    latency_slack_ms: float = Field(50.0, ge=0, le=3.6e6, description="a P95 difference below this never fails (jitter)")
    max_cost_ratio: float = Field(2.0, gt=0, le=1e6)
    max_thumbs_drop: float = Field(0.1, ge=0, le=1)
    min_feedback: int = Field(20, ge=1, le=10**9)
    failure_limit: int = Field(1, ge=1, le=1000, description="failed analyses before the rollback")
    inconclusive_after_s: float = Field(3600.0, gt=0, le=365 * 86400,
                                        description="a step short of the sample this long: pause")

    @field_validator("steps")
    @classmethod
    def _rising_shares(cls, steps: list[float]) -> list[float]:
        if any(not 0 < share <= 1 for share in steps):
            raise ValueError("each step is a share of the traffic in (0, 1]")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError("steps must rise")
        return steps


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Name
    model: str = Field(description="the model name clients send (a deployment: usually the champion's)")
    mode: Mode = "ab"
    arms: list[Arm] = Field(min_length=2, max_length=8, description="the first is the champion")
    unit: Literal["episode", "user", "key"] = Field("user", description="what stays on one arm: the episode id "
                                                   "(x-shipyard-episode-id), the body's `user`, or the API key "
                                                   "(each falls back to the next)")
    salt: str | None = Field(None, max_length=64, description="default: the experiment's name")
    status: Status = "running"
    promoted_arm: str | None = None
    tenant_id: str | None = Field(None, description="only this tenant's requests take part (default: all)")
    shadow: ShadowSettings = ShadowSettings()
    canary: CanarySettings = CanarySettings()
    shadow_capped_day: str | None = Field(None, description="set when copies hit a daily cap (UTC date)")

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSpec:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must differ")
        if len({a.deployment for a in self.arms}) != len(self.arms):
            raise ValueError("each arm needs its own deployment")
        if self.mode == "ab" and not any(a.weight > 0 for a in self.arms):
            raise ValueError("at least one arm needs a weight above 0")
        if self.promoted_arm is not None and self.promoted_arm not in names:
            raise ValueError(f"promoted_arm {self.promoted_arm!r} is not an arm")
        return self

    @property
    def champion(self) -> Arm:
        return self.arms[0]

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    def serving_weights(self) -> list[float]:
        """Each arm's share of the served traffic now (mode and status applied)."""
        if self.status == "promoted":
            return [1.0 if a.name == self.promoted_arm else 0.0 for a in self.arms]
        if self.status == "rolled_back" or self.mode in ("shadow", "champion_challenger"):
            return [1.0] + [0.0] * (len(self.arms) - 1)
        if self.mode == "canary":
            canary = min(1.0, sum(a.weight for a in self.arms[1:]))
            rest = [a.weight for a in self.arms[1:]]
            return [1.0 - canary, *rest]
        return [a.weight for a in self.arms]


@dataclass(frozen=True)
class Assignment:
    experiment: str
    arm: str
    deployment: str
    mirror: str | None = None  # the deployment a copy of this request goes to (shadow, champion-challenger)
    mirror_arm: str | None = None

    @property
    def variant(self) -> str:
        return f"{self.experiment}/{self.arm}"

    def header(self) -> str:
        """x-shipyard-variant: the deployment, then the experiment and arm."""
        return f"{self.deployment}; experiment={self.experiment}; arm={self.arm}"


def unit_point(salt: str, experiment: str, unit: str) -> float:
    """Where a unit falls in [0, 1): the same place for the same (salt, experiment, unit), always."""
    digest = hashlib.blake2b(f"{salt}\0{experiment}\0{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / SCALE


def pick(spec: ExperimentSpec, weights: list[float], unit: str) -> Arm:
    """The arm whose slice holds the unit's point."""
    total = sum(weights)
    point = unit_point(spec.salt or spec.name, spec.name, unit) * total
    running = 0.0
    for arm, weight in zip(spec.arms, weights):
        running += weight
        if point < running:
            return arm
    return next(a for a, w in zip(reversed(spec.arms), reversed(weights)) if w > 0)
