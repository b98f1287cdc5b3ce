"""`shipyard.yaml`, as pydantic models. Every field has a default: no file is needed.

```yaml
server: {host: 127.0.0.1, port: 8000, log_format: text}
deployments:
  demo:                     # the model name clients send
    engine: transformers
    model: ~/models/qwen2-0.5b
    max_num_seqs: 32
```

Each package owns its section's model (routing, scaling, gateway, store, cache, monitor,
experiments, engines); this module composes them, and owns what belongs to the server process
itself (`server:`, `auth:`). Only `cli/` and `server/` import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from shipyard.cache.settings import CacheConfig
from shipyard.engines.settings import EmbeddingEngineConfig
from shipyard.experiments.feedback import FeedbackConfig
from shipyard.experiments.review import ReviewConfig
from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.trigger_spec import RetrainingConfig
from shipyard.gateway.settings import GatewayConfig
from shipyard.monitor.settings import MonitorConfig
from shipyard.routing.settings import (
    LlamaCppDeployment,
    RoutingSettings,
    TransformersDeployment,
    TritonDeployment,
    UpstreamDeployment,
    engine_kind,
)
from shipyard.scaling.settings import AutoscalingConfig
from shipyard.store.settings import StoreConfig


BUILTIN_EMBEDDING_NAME = "shipyard-embed"

__all__ = ["AutoscalingConfig", "Deployment", "RoutedDeployment", "ServerConfig", "ShipyardConfig",
           "TransformersDeployment"]


class RoutedDeployment(RoutingSettings):
    """A routed deployment (routing/settings.py), scaled by load when it has `autoscaling`."""

    autoscaling: AutoscalingConfig | None = Field(None, description="add and remove replicas by load (docs/scaling.md)")

    @model_validator(mode="after")
    def _replicas_given(self) -> RoutedDeployment:
        scaling = self.autoscaling
        if not self.replicas and scaling is None:
            raise ValueError("a routed deployment needs at least one replica (or `autoscaling` with a template)")
        if scaling is not None and scaling.min_replicas == 0 and self.replicas:
            raise ValueError("min_replicas: 0 scales to zero, but replicas listed in `replicas` are never removed: "
                             "leave `replicas` out and let the `autoscaling.replica` template start them")
        if scaling is not None and scaling.runtime == "ray" and self.replicas:
            raise ValueError("runtime ray: the replicas are Ray's (from the `autoscaling.replica` template); "
                             "leave `replicas` out")
        if scaling is not None and len(self.replicas) > scaling.max_replicas:
            raise ValueError(f"{len(self.replicas)} replicas are listed, above autoscaling.max_replicas "
                             f"{scaling.max_replicas}")
        return self


def _deployment_kind(value) -> str:
    if isinstance(value, dict):
        return "routed" if "replicas" in value or "autoscaling" in value else engine_kind(value)
    return "routed" if isinstance(value, RoutedDeployment) else engine_kind(value)


# Told apart by `engine` (which may be left out for the embedded engine), or by `replicas` / `autoscaling`.
Deployment = Annotated[Union[Annotated[TransformersDeployment, Tag("transformers")],
                             Annotated[LlamaCppDeployment, Tag("llamacpp")],
                             Annotated[UpstreamDeployment, Tag("openai_http")],
                             Annotated[TritonDeployment, Tag("triton")],
                             Annotated[RoutedDeployment, Tag("routed")]], Discriminator(_deployment_kind)]


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
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
    workers: int = Field(1, ge=1, le=64, description="Server processes sharing the port (server/workers.py)")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field("auto", description="auto: uvloop where installed")
    shutdown_grace_s: float = Field(10.0, ge=0, description="In-flight requests get this long to finish at "
                                                             "shutdown, then end with an error event")
    api_launch: bool = Field(False, description="Admins may add `engine: launch` replicas over the API, which "
                             "runs servers on this host (their own programs, a vetted environment; audited)")


class ShipyardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    server: ServerConfig = ServerConfig()
    auth: Literal["enabled", "disabled"] = Field("enabled", description="'disabled' only for local use")
    store: StoreConfig = StoreConfig()
    gateway: GatewayConfig = GatewayConfig()
    cache: CacheConfig = CacheConfig()
    monitor: MonitorConfig = MonitorConfig()
    deployments: dict[str, Deployment] = Field(default_factory=dict)
    embeddings: dict[str, EmbeddingEngineConfig] = Field(
        default_factory=dict, description="embedding models served on /v1/embeddings (sentence-transformers "
                                          "folders, or 'builtin': the shipped all-MiniLM-L6-v2)")
    experiments: list[ExperimentSpec] = Field(default_factory=list, description="shadow, canary, A/B and "
                                              "champion-challenger over deployments (docs/experiments.md); "
                                              "seeded into the store at start")
    feedback: FeedbackConfig = FeedbackConfig()
    canary_interval_s: float = Field(5.0, gt=0, description="how often running canaries are analysed")
    review: ReviewConfig = Field(ReviewConfig(), description="the human review queue (docs/experiments.md)")
    retraining: RetrainingConfig = Field(RetrainingConfig(), description="retraining triggers (docs/experiments.md)")

    @classmethod
    def load(cls, path: str | Path | None) -> ShipyardConfig:
        if path is None:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    @model_validator(mode="after")
    def _names_unique(self) -> ShipyardConfig:
        both = set(self.deployments) & set(self.embeddings)
        if both:
            raise ValueError(f"{sorted(both)} name both a deployment and an embedding model")
        return self

    def with_embedding_model(self, model: str) -> ShipyardConfig:
        """Add an embedding model: 'builtin' serves the shipped MiniLM as `shipyard-embed`; a folder
        is served under its folder's name."""
        name = BUILTIN_EMBEDDING_NAME if model == "builtin" else Path(model).expanduser().resolve().name
        path = model if model == "builtin" else str(Path(model).expanduser())
        base = self.embeddings.get(name)
        settings = {**(base.model_dump() if base is not None else {}), "model": path}
        embeddings = {**self.embeddings, name: EmbeddingEngineConfig.model_validate(settings)}
        return self.model_copy(update={"embeddings": embeddings})

    def with_model(self, model_path: str, name: str | None = None) -> ShipyardConfig:
        """Add (or replace) a deployment serving `model_path`, named after its folder by default."""
        name = name or Path(model_path).expanduser().resolve().name
        deployments = dict(self.deployments)
        base = deployments.get(name)
        settings = base.model_dump() if isinstance(base, TransformersDeployment) else {}
        settings["model"] = str(Path(model_path).expanduser())
        deployments[name] = TransformersDeployment.model_validate(settings)
        return self.model_copy(update={"deployments": deployments})

    def on_runtime(self, runtime: str, ray_address: str | None = None) -> ShipyardConfig:
        """`serve --runtime`: every autoscaled deployment on that runtime; with `ray`, every embedded
        model too becomes an autoscaled deployment whose replicas Ray runs (1 to 4 of them)."""
        deployments = {}
        for name, spec in self.deployments.items():
            if runtime == "ray" and isinstance(spec, TransformersDeployment):
                template = {"engine": "launch", "kind": "worker", "model": spec.model, "num_threads": spec.num_threads}
                spec = RoutedDeployment.model_validate({"autoscaling": {"min_replicas": 1, "replica": template}})
            if isinstance(spec, RoutedDeployment) and spec.autoscaling is not None:
                scaling = spec.autoscaling.model_dump()
                scaling["runtime"] = runtime
                if ray_address is not None:
                    scaling["ray"]["address"] = ray_address
                spec = RoutedDeployment.model_validate({**spec.model_dump(), "autoscaling": scaling})
            deployments[name] = spec
        return self.model_copy(update={"deployments": deployments})
