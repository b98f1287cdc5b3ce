"""The `deployments:` of shipyard.yaml as routing sees them: a deployment served by one engine
(embedded, llama.cpp, an upstream, Triton), or a routed one over replicas (balancing, retries,
breakers, fallbacks). Autoscaling is scaling's (scaling/settings.py); config.py composes them."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from shipyard.engines.launch import LaunchConfig
from shipyard.engines.settings import LlamaCppEngineConfig, TransformersEngineConfig
from shipyard.engines.upstream import OpenAIHTTPEngineConfig, TritonEngineConfig


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


def engine_kind(value) -> str:
    engine = value.get("engine", "transformers") if isinstance(value, dict) else getattr(value, "engine", None)
    return engine or "transformers"


Replica = Annotated[Union[Annotated[TransformersReplica, Tag("transformers")],
                          Annotated[LlamaCppReplica, Tag("llamacpp")],
                          Annotated[UpstreamReplica, Tag("openai_http")],
                          Annotated[TritonReplica, Tag("triton")],
                          Annotated[LaunchedReplica, Tag("launch")]], Discriminator(engine_kind)]


class BreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    failures: int = Field(5, ge=1, description="failures within window_s that open a replica's breaker")
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(10.0, gt=0, description="open this long, then one probe (half-open)")


class RoutingSettings(BaseModel):
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

    @property
    def affinity_on(self) -> bool:
        """Round-robin and weighted are explicit shares of traffic: affinity would override them."""
        if self.prefix_affinity is not None:
            return self.prefix_affinity
        return self.balancer in ("least_outstanding", "power_of_two")


