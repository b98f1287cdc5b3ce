"""Autoscaling's settings: the policy's (scaling/policy.py), where replicas run (this machine or a
Ray cluster) and the template each new replica is launched from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipyard.routing.settings import LaunchedReplica
from shipyard.scaling.policy import ScalingConfig


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


