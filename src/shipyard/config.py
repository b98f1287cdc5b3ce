"""`shipyard.yaml`, as pydantic models. Every field has a default: no file is needed.

```yaml
server: {host: 127.0.0.1, port: 8000, log_format: text}
deployments:
  demo:                     # the model name clients send
    engine: transformers
    model: ~/models/qwen2-0.5b
    max_num_seqs: 32
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from shipyard.engines.transformers_engine import TransformersEngineConfig


class TransformersDeployment(TransformersEngineConfig):
    """A model served in-process by the embedded PyTorch engine."""

    model_config = ConfigDict(extra="forbid")
    engine: Literal["transformers"] = "transformers"


# Later engines (vLLM, TGI, llama.cpp, ...) join here as a union told apart by `engine`; with one
# member, `engine` may be left out.
Deployment = TransformersDeployment


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "info"
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="Larger request bodies get 413")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 when the queue is full")
    max_sequences_per_request: int = Field(64, ge=1, description="prompts × n in one call; more is a 400")
    body_timeout_s: float = Field(30.0, gt=0, description="A request body must arrive within this (else 408)")
    body_idle_timeout_s: float = Field(10.0, gt=0, description="Longest pause between body chunks (else 408)")
    header_timeout_s: float = Field(10.0, gt=0, description="Request headers must arrive within this")
    keep_alive_s: float = Field(5.0, gt=0, description="Idle time before a kept-alive connection closes")
    shutdown_grace_s: float = Field(10.0, ge=0, description="In-flight requests get this long to finish at "
                                                             "shutdown, then end with an error event")


class LimitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(None, ge=1, description="requests per minute")
    tpm: int | None = Field(None, ge=1, description="prompt + completion tokens per minute")
    max_concurrent: int | None = Field(None, ge=1)


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, description="SQLAlchemy URL; env SHIPYARD_DATABASE_URL; default SQLite in "
                                              "data_dir")
    data_dir: str | None = Field(None, description="default: env SHIPYARD_DATA_DIR or ~/.local/share/shipyard")

    def resolved_data_dir(self) -> Path:
        value = self.data_dir or os.environ.get("SHIPYARD_DATA_DIR") or "~/.local/share/shipyard"
        return Path(value).expanduser()


class ShipyardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: ServerConfig = ServerConfig()
    auth: Literal["enabled", "disabled"] = Field("enabled", description="'disabled' only for local use")
    store: StoreConfig = StoreConfig()
    gateway: GatewayConfig = GatewayConfig()
    deployments: dict[str, Deployment] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> ShipyardConfig:
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    def with_model(self, model_path: str, name: str | None = None) -> ShipyardConfig:
        """Add (or replace) a deployment serving `model_path`, named after its folder by default."""
        name = name or Path(model_path).expanduser().resolve().name
        deployments = dict(self.deployments)
        base = deployments.get(name)
        settings = base.model_dump() if base is not None else {}
        settings["model"] = str(Path(model_path).expanduser())
        deployments[name] = TransformersDeployment.model_validate(settings)
        return self.model_copy(update={"deployments": deployments})
