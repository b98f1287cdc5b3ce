"""The local runtime: the policy actuated on Shipyard worker processes on this machine.

A routed deployment with `autoscaling:` gets one `LocalAutoscaler`. Every `interval_s` it reads
the deployment's signals — requests in flight at its replicas (as this gateway counts them),
requests waiting in the gateway's admission queue, ready and starting replicas — asks the policy,
and acts:
- up: new replicas from the `replica` template (launched worker processes), named
  `<deployment>-auto-<n>`, join the routing pool once their engine is ready;
- down: one autoscaled replica, the least busy, is drained (no new requests; its in-flight
  streams finish) and then stopped. Replicas listed in shipyard.yaml are never removed.
A replica that crashes is restarted by its launcher: a replacement, not a scale event.
With `min_replicas: 0` the last replica goes after the idle delay, and a `ColdStartBuffer` holds the
requests that come next while the autoscaler (woken at once) starts one.
Every decision is logged with its reasons and kept for `GET /admin/deployments/{name}/autoscaler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from shipyard.aio import cancel_and_wait
from shipyard.scaling.cold_start import ColdStartBuffer
from shipyard.scaling.policy import Decision, ScalingPolicy, Signals

log = logging.getLogger("shipyard.scaling")


def auto_replica_name(deployment: str, number: int) -> str:
    return f"{deployment}-auto-{number}"


def autoscaler_families(autoscalers: dict):
    """Prometheus gauges: each autoscaled deployment's desired and current replicas, scale events."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    desired = GaugeMetricFamily("shipyard:autoscaler_desired_replicas", "The policy's last decision",
                                labels=["model_name"])
    current = GaugeMetricFamily("shipyard:autoscaler_current_replicas", "Ready and starting replicas",
                                labels=["model_name"])
    events = CounterMetricFamily("shipyard:autoscaler_scale_events", "Decisions that changed the replica count",
                                 labels=["model_name"])
    held = GaugeMetricFamily("shipyard:autoscaler_cold_start_waiting", "Requests held while a scaled-to-zero "
                             "deployment starts a replica", labels=["model_name"])
    rejected = CounterMetricFamily("shipyard:autoscaler_cold_start_rejected", "Requests turned away (503) by a "
                                   "full cold-start buffer or its wait limit", labels=["model_name"])
    for name, autoscaler in autoscalers.items():
        if autoscaler.buffer is not None:
            held.add_metric([name], autoscaler.buffer.waiting)
            rejected.add_metric([name], autoscaler.buffer.rejected)
        decisions = autoscaler.decisions
        now = autoscaler.current_replicas()
        desired.add_metric([name], decisions[-1].desired if decisions else now)
        current.add_metric([name], now)
        events.add_metric([name], autoscaler.scale_events)
    yield from (desired, current, events, held, rejected)


class LocalAutoscaler:
    def __init__(self, deployment, settings, admission=None, clock=time.monotonic,
                 p95_latency: Callable[[], float | None] = lambda: None,
                 gpu_utilization: Callable[[], float | None] = lambda: None):
        self.deployment = deployment  # routing.deployment.DeploymentEngine
        self.settings = settings  # config.AutoscalingConfig
        self.admission = admission  # gateway.admission.TieredAdmission: its queue is waiting load
        self.p95_latency = p95_latency  # end-to-end, over the last minute (the monitor's windows)
        self.gpu_utilization = gpu_utilization  # the busiest local GPU's, 0..1 (blocking: NVML)
        self.policy = ScalingPolicy(settings)
        self.clock = clock
        self.decisions: deque[Decision] = deque(maxlen=200)
        self.scale_events = 0
        self._starting: dict[str, asyncio.Task] = {}
        self._stopping: dict[str, asyncio.Task] = {}
        self._counter = sum(1 for r in deployment.replicas if r.name.startswith(self.prefix))
        self._seen_started = deployment.requests_started
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self.buffer: ColdStartBuffer | None = None
        if settings.min_replicas == 0:
            self.buffer = ColdStartBuffer(deployment.name, settings.cold_start_buffer, settings.cold_start_timeout_s,
                                          lambda: any(r.available() for r in deployment.replicas), self._wake.set,
                                          clock)
            deployment.cold_start = self.buffer

    @property
    def prefix(self) -> str:
        return f"{self.deployment.name}-auto-"

    def current_replicas(self) -> int:
        signals = self.signals()
        return signals.ready + signals.starting

    def signals(self) -> Signals:
        replicas = [r for r in self.deployment.replicas if r.name not in self._stopping and not r.draining]
        ready = [r for r in replicas if r.engine.ready()]
        waiting = self.admission.waiting if self.admission is not None else 0
        if self.buffer is not None:
            waiting += self.buffer.waiting
        stats = [r.engine.stats() for r in ready]
        # A replica in the pool that is not ready is loading, or restarting after a crash: capacity on
        # its way, never a reason to launch another.
        return Signals(running=sum(r.outstanding for r in replicas), waiting=waiting, ready=len(ready),
                       starting=len(self._starting) + len(replicas) - len(ready),
                       kv_cache_usage=max((s.kv_cache_usage for s in stats), default=None),
                       p95_latency_s=self.p95_latency())

    async def step(self) -> Decision:
        signals = self.signals()
        started = self.deployment.requests_started
        signals.arrived, self._seen_started = started - self._seen_started, started
        signals.gpu_utilization = await asyncio.to_thread(self.gpu_utilization)
        decision = self.policy.decide(self.clock(), signals)
        self.decisions.append(decision)
        if decision.change:
            self.scale_events += 1
            log.info("autoscaler %s: %d → %d replicas (%s)", self.deployment.name, decision.current,
                     decision.desired, "; ".join(decision.reasons))
        room = self.settings.max_replicas - len(self.deployment.replicas) - len(self._starting)
        for _ in range(max(0, min(decision.change, room))):  # never past max_replicas, whatever the signals said
            self._launch()
        if decision.change < 0:
            for _ in range(-decision.change):
                if not self._retire():
                    break
        return decision

    def _launch(self) -> None:
        self._counter += 1
        name = auto_replica_name(self.deployment.name, self._counter)
        replica = self.deployment.make_replica({**self.settings.replica.model_dump(), "name": name})
        task = asyncio.create_task(self._add(replica))
        self._starting[name] = task

    async def _add(self, replica) -> None:
        try:
            await self.deployment.add_replica(replica)
        except asyncio.CancelledError:  # scaled down before it was ready: its process must not linger
            await asyncio.shield(replica.engine.stop())
            raise
        except Exception as exc:  # the next decision sees the capacity that really exists
            log.error("autoscaler %s: replica %s did not start: %s", self.deployment.name, replica.name, exc)
            await replica.engine.stop()
        finally:
            self._starting.pop(replica.name, None)

    def _retire(self) -> bool:
        """Drain and stop the least busy autoscaled replica (a starting one first: it serves no one)."""
        if self._starting:
            name, task = self._starting.popitem()
            task.cancel()
            return True
        candidates = [r for r in self.deployment.replicas
                      if r.name.startswith(self.prefix) and r.name not in self._stopping and not r.draining]
        if not candidates:
            return False
        victim = min(candidates, key=lambda r: r.outstanding)
        self._stopping[victim.name] = asyncio.create_task(self._remove(victim.name))
        return True

    async def _remove(self, name: str) -> None:
        try:
            await self.deployment.remove_replica(name, self.settings.drain_timeout_s,
                                                 allow_last=self.settings.min_replicas == 0)
        except (KeyError, ValueError) as exc:
            log.warning("autoscaler %s: %s not removed: %s", self.deployment.name, name, exc)
        finally:
            self._stopping.pop(name, None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # a held request wakes it early
                await asyncio.wait_for(self._wake.wait(), self.settings.interval_s)
            self._wake.clear()
            try:
                await self.step()
            except Exception:  # a failed decision is logged; the next one runs
                log.exception("autoscaler %s: decision failed", self.deployment.name)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        for task in [*self._starting.values(), *self._stopping.values()]:
            task.cancel()
        await asyncio.gather(*self._starting.values(), *self._stopping.values(), return_exceptions=True)

    async def view(self) -> dict:
        return {"deployment": self.deployment.name, "runtime": "local", "settings": self.settings.model_dump(mode="json"),
                "replicas": [r.name for r in self.deployment.replicas], "starting": sorted(self._starting),
                "draining": sorted(self._stopping), "scale_events": self.scale_events,
                "cold_start": None if self.buffer is None else {
                    "waiting": self.buffer.waiting, "served": self.buffer.served, "rejected": self.buffer.rejected,
                    "last_cold_start_s": self.buffer.last_cold_start_s},
                "decisions": [{"at": d.at, "current": d.current, "desired": d.desired, "reasons": d.reasons}
                              for d in list(self.decisions)[-50:]]}
