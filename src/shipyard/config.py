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
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from shipyard.cache.exact import ExactCacheConfig
from shipyard.cache.semantic import SemanticCacheConfig
from shipyard.engines.launch import LaunchConfig
from shipyard.engines.settings import LlamaCppEngineConfig, TransformersEngineConfig
from shipyard.engines.upstream import OpenAIHTTPEngineConfig, TritonEngineConfig
from shipyard.experiments.feedback import FeedbackConfig
from shipyard.experiments.review import ReviewConfig
from shipyard.experiments.spec import ExperimentSpec
from shipyard.experiments.trigger_spec import RetrainingConfig
from shipyard.monitor.settings import MonitorConfig
from shipyard.scaling.policy import ScalingConfig


class TransformersDeployment(TransformersEngineConfig):
    """A model served in-process by the embedded PyTorch engine."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    engine: Literal["transformers"] = "transformers"


class LlamaCppDeployment(LlamaCppEngineConfig):
    """A GGUF file served in-process: llama.cpp runs the forward, the embedded engine the rest."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    engine: Literal["llamacpp"] = "llamacpp"


class UpstreamDeployment(OpenAIHTTPEngineConfig):
    """A model served by an OpenAI-compatible server elsewhere (vLLM, TGI, SGLang, trtllm-serve,
    llama.cpp, a Shipyard worker, a hosted API), attached by URL."""


class TritonDeployment(TritonEngineConfig):
    """A model served by NVIDIA Triton's generate extension (TensorRT-LLM, Python backends)."""


class _ReplicaFields(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)
    name: str | None = Field(None, max_length=100, description="default: <deployment>-<index>")
    weight: float = Field(1.0, gt=0, le=1_000_000, description="for the weighted balancer")
    min_tier: int = Field(0, ge=0, le=100, description="tier routing: only keys of at least this tier go here")


class TransformersReplica(TransformersDeployment, _ReplicaFields):
    pass


class LlamaCppReplica(LlamaCppDeployment, _ReplicaFields):
    pass


class UpstreamReplica(UpstreamDeployment, _ReplicaFields):
    pass


class TritonReplica(TritonDeployment, _ReplicaFields):
    pass


class LaunchedReplica(LaunchConfig, _ReplicaFields):
    """A replica whose server this gateway starts and restarts (a worker, vLLM, TGI, ...)."""


def _engine_kind(value) -> str:
    engine = value.get("engine", "transformers") if isinstance(value, dict) else getattr(value, "engine", None)
    return engine or "transformers"


Replica = Annotated[Union[Annotated[TransformersReplica, Tag("transformers")],
                          Annotated[LlamaCppReplica, Tag("llamacpp")],
                          Annotated[UpstreamReplica, Tag("openai_http")],
                          Annotated[TritonReplica, Tag("triton")],
                          Annotated[LaunchedReplica, Tag("launch")]], Discriminator(_engine_kind)]


class BreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    failures: int = Field(5, ge=1, description="failures within window_s that open a replica's breaker")
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(10.0, gt=0, description="open this long, then one probe (half-open)")


class RayRuntimeConfig(BaseModel):
    """Where and how the replicas run on a Ray cluster (runtime: ray)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    address: str = Field("auto", description="the cluster's address (host:port of its head), or auto")
    proxy_host: str = Field("127.0.0.1", description="Ray Serve's HTTP proxy, which the gateway sends requests to")
    proxy_port: int = Field(8001, ge=1, le=65535)
    num_cpus: float = Field(1.0, ge=0, description="per replica; fractions share a core")
    num_gpus: float = Field(0.0, ge=0, description="per replica")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per replica")
    max_ongoing_requests: int = Field(32, ge=1, description="requests one replica runs at once; more wait in Ray")
    max_queued_requests: int = Field(512, ge=1, description="requests waiting in Ray; more get 503")
    look_back_period_s: float = Field(15.0, gt=0, description="the window Ray averages the request counts over")
    health_check_period_s: float = Field(10.0, gt=0)
    delete_on_stop: bool = Field(True, description="remove the Ray Serve application when the gateway stops")


class AutoscalingConfig(ScalingConfig):
    """Replicas added and removed by the policy (scaling/policy.py), launched from a template."""

    runtime: Literal["local", "ray"] = Field("local", description="local: worker processes on this machine; "
                                             "ray: Ray Serve replicas on a Ray cluster, the policy driving Ray's "
                                             "autoscaler")
    ray: RayRuntimeConfig = RayRuntimeConfig()
    replica: LaunchedReplica = Field(description="what a new replica is (engine: launch, kind: worker, ...)")
    interval_s: float = Field(5.0, gt=0, description="how often the policy decides")
    drain_timeout_s: float = Field(60.0, gt=0, description="in-flight requests of a removed replica get this long")
    cold_start_buffer: int = Field(64, ge=1, le=100_000, description="min_replicas 0: requests held while the "
                                   "first replica starts; more get 503 with Retry-After")
    cold_start_timeout_s: float = Field(120.0, gt=0, description="min_replicas 0: the longest a held request "
                                        "waits for a replica, then 503 with Retry-After")

    @model_validator(mode="after")
    def _runtime_fits(self) -> AutoscalingConfig:
        if self.runtime == "ray":
            if self.replica.kind != "worker":
                raise ValueError("runtime ray runs Shipyard workers: the replica template needs kind: worker")
            if self.min_replicas < 1:
                raise ValueError("runtime ray: min_replicas 0 is the local runtime's (the gateway's cold-start "
                                 "buffer); on Ray the least is 1")
        return self


class RoutedDeployment(BaseModel):
    """One model name over several replicas, with balancing, retries, breakers and fallbacks."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    replicas: list[Replica] = Field(default_factory=list, description="may be left out with autoscaling: "
                                    "its `replica` template starts min_replicas of them")
    balancer: Literal["round_robin", "least_outstanding", "weighted", "power_of_two"] = "least_outstanding"
    retries: int = Field(2, ge=0, le=10, description="further attempts on other replicas, before a first token")
    first_token_timeout_s: float = Field(60.0, gt=0)
    total_timeout_s: float = Field(600.0, gt=0)
    fallback: list[str] = Field(default_factory=list, description="other deployments to try, in order")
    response_store: bool = Field(False, description="last resort: the last good answer to the same prompt")
    prefix_affinity: bool | None = Field(None, description="send a prompt where its prefix was sent (KV-cache "
                                                            "reuse); default: on with the load-aware balancers")
    affinity_slack: int = Field(4, ge=0, description="requests the prefix's replica may run above the least "
                                                      "busy one before the request goes elsewhere")
    breaker: BreakerConfig = BreakerConfig()
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

    @property
    def affinity_on(self) -> bool:
        """Round-robin and weighted are explicit shares of traffic: affinity would override them."""
        if self.prefix_affinity is not None:
            return self.prefix_affinity
        return self.balancer in ("least_outstanding", "power_of_two")


def _deployment_kind(value) -> str:
    if isinstance(value, dict):
        return "routed" if "replicas" in value or "autoscaling" in value else _engine_kind(value)
    return "routed" if isinstance(value, RoutedDeployment) else _engine_kind(value)


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
    workers: int = Field(1, ge=1, le=64, description="Server processes sharing the port (api/workers.py)")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field("auto", description="auto: uvloop where installed")
    shutdown_grace_s: float = Field(10.0, ge=0, description="In-flight requests get this long to finish at "
                                                             "shutdown, then end with an error event")
    api_launch: bool = Field(False, description="Admins may add `engine: launch` replicas over the API, which "
                             "runs servers on this host (their own programs, a vetted environment; audited)")


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


class StoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    url: str | None = Field(None, description="SQLAlchemy URL; env SHIPYARD_DATABASE_URL; default SQLite in "
                                              "data_dir")
    data_dir: str | None = Field(None, description="default: env SHIPYARD_DATA_DIR or ~/.local/share/shipyard")

    def resolved_data_dir(self) -> Path:
        value = self.data_dir or os.environ.get("SHIPYARD_DATA_DIR") or "~/.local/share/shipyard"
        return Path(value).expanduser()


class CacheConfig(BaseModel):
    """The exact cache (on by default, for deterministic requests) and the semantic cache
    (opt-in per deployment). KV prefix sharing is set per embedded deployment."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    redis_url: str | None = Field(None, description="A Redis of the cache's own (env SHIPYARD_CACHE_REDIS_URL), "
                                  "which may evict; default: the gateway's, which must not")
    exact: ExactCacheConfig = ExactCacheConfig()
    semantic: SemanticCacheConfig = SemanticCacheConfig()


class ShipyardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    server: ServerConfig = ServerConfig()
    auth: Literal["enabled", "disabled"] = Field("enabled", description="'disabled' only for local use")
    store: StoreConfig = StoreConfig()
    gateway: GatewayConfig = GatewayConfig()
    cache: CacheConfig = CacheConfig()
    monitor: MonitorConfig = MonitorConfig()
    deployments: dict[str, Deployment] = Field(default_factory=dict)
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
