"""The `gateway:` section: Redis, limits per deployment, prices, admission, usage writing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="prompt + completion tokens per minute")
    max_concurrent: int | None = Field(None, ge=1)


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    redis_url: str | None = Field(None, description="Shared limits and key freshness across processes "
                                                    "(env SHIPYARD_REDIS_URL)")
    redis_failure: Literal["open", "closed"] = Field("open", description="When Redis is unreachable: admit "
                                                                         "with a warning, or refuse with 503")
    key_cache_ttl_s: float = Field(2.0, ge=0, description="Without Redis: how stale another process's "
                                                          "cached key may be")
    prices: dict[str, dict[str, float]] = Field(default_factory=dict, description="model (or 'default') → "
                                                "{prompt, completion} in USD per million tokens")
    deployment_limits: dict[str, LimitsConfig] = Field(default_factory=dict, description="global, per model")
    max_inflight: int = Field(128, ge=1, description="Requests running per deployment before queueing")
    max_queue: int = Field(512, ge=0, description="Requests waiting per deployment before shedding")
    queue_timeout_s: float = Field(30.0, gt=0)
    default_completion_estimate: int = Field(256, ge=1, description="Tokens reserved when max_tokens is unset")
    usage_flush_interval_s: float = Field(0.5, gt=0)


