"""Prometheus metrics, named after vLLM's (`vllm:` → `shipyard:`) so existing dashboards fit.

Each app gets its own registry (several servers can live in one process, e.g. in tests). Queue
and cache gauges are read from the engines at scrape time, so they are never stale.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shipyard.engines.base import Engine
from shipyard.hooks import RequestEnded, RequestHooks
from shipyard.monitor.gpu import gpu_stats
from shipyard.monitor.health import HealthWindows

# vLLM's buckets: TTFT and ITL are short, end-to-end and queue times long.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


def gpu_families() -> Iterable[GaugeMetricFamily]:
    """NVML's figures per GPU (nothing without a GPU)."""
    gpus = gpu_stats()
    if not gpus:
        return
    memory = GaugeMetricFamily("shipyard:gpu_memory_used_perc", "GPU memory used, 0 to 1", labels=["gpu"])
    used = GaugeMetricFamily("shipyard:gpu_memory_used_bytes", "GPU memory used", labels=["gpu"])
    busy = GaugeMetricFamily("shipyard:gpu_utilization_perc", "GPU utilization (NVML), 0 to 1", labels=["gpu"])
    for gpu in gpus:
        label = [str(gpu["index"])]
        memory.add_metric(label, gpu["memory_used_perc"])
        used.add_metric(label, gpu["memory_used_bytes"])
        busy.add_metric(label, gpu["utilization_perc"])
    yield from (memory, used, busy)


class _EngineStateCollector(Collector):
    def __init__(self, engines: Callable[[], dict[str, Engine]], layers: Callable[[], dict] = dict):
        self.engines = engines
        self._layers = layers
        # Other gauges read at scrape time (GPUs, drift): callables yielding metric families.
        self.sources: list[Callable[[], Iterable]] = [gpu_families]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        running = GaugeMetricFamily("shipyard:num_requests_running", "Requests in the running batch", labels=["model_name"])
        waiting = GaugeMetricFamily("shipyard:num_requests_waiting", "Requests waiting to be scheduled", labels=["model_name"])
        kv = GaugeMetricFamily("shipyard:kv_cache_usage_perc", "KV-cache usage, 0 to 1", labels=["model_name"])
        busy = CounterMetricFamily("shipyard:engine_busy_seconds", "Seconds the engine spent computing steps "
                                   "(its rate is the model's utilization)", labels=["model_name"])
        routing = {
            "retries": CounterMetricFamily("shipyard:routing_retries", "Attempts on another replica", labels=["model_name"]),
            "fallbacks": CounterMetricFamily("shipyard:routing_fallbacks", "Answers from a fallback deployment",
                                             labels=["model_name"]),
            "store_answers": CounterMetricFamily("shipyard:routing_store_answers", "Answers from the response store",
                                                 labels=["model_name"]),
            "no_replica": CounterMetricFamily("shipyard:routing_no_replica", "Requests with no healthy replica left",
                                              labels=["model_name"]),
            "affinity_routed": CounterMetricFamily("shipyard:routing_affinity_routed",
                                                   "Requests sent to the replica holding their prompt prefix",
                                                   labels=["model_name"]),
            "affinity_shed": CounterMetricFamily("shipyard:routing_affinity_shed",
                                                 "Requests whose prefix replica was too busy", labels=["model_name"]),
        }
        up = GaugeMetricFamily("shipyard:replica_up", "1 while the replica answers its health check",
                               labels=["model_name", "replica"])
        breaker = GaugeMetricFamily("shipyard:replica_breaker_open", "1 while the replica's circuit breaker is open",
                                    labels=["model_name", "replica"])
        outstanding = GaugeMetricFamily("shipyard:replica_outstanding", "Requests this gateway has in flight there",
                                        labels=["model_name", "replica"])
        for name, engine in self.engines().items():
            stats = engine.stats()
            running.add_metric([name], stats.num_running)
            waiting.add_metric([name], stats.num_waiting)
            kv.add_metric([name], stats.kv_cache_usage)
            busy.add_metric([name], stats.busy_s)
            snapshot = getattr(engine, "routing_snapshot", None)
            if snapshot is None:
                continue
            state = snapshot()
            for key, family in routing.items():
                family.add_metric([name], state["counters"][key])
            for replica in state["replicas"]:
                labels = [name, replica["name"]]
                up.add_metric(labels, 1.0 if replica["up"] else 0.0)
                breaker.add_metric(labels, 1.0 if replica["breaker"] == "open" else 0.0)
                outstanding.add_metric(labels, replica["outstanding"])
        yield from (running, waiting, kv, busy, *routing.values(), up, breaker, outstanding)
        yield from self._cache_families()
        for source in self.sources:
            yield from source()

    def _cache_families(self):
        """Per deployment and cache layer: lookups, hits and the hit rate (the exact and semantic
        caches count requests; KV prefix sharing counts prompt tokens, under vLLM's names)."""
        queries = CounterMetricFamily("shipyard:cache_queries", "Cache lookups", labels=["model_name", "layer"])
        hits = CounterMetricFamily("shipyard:cache_hits", "Cache lookups answered", labels=["model_name", "layer"])
        rate = GaugeMetricFamily("shipyard:cache_hit_rate", "Hits / lookups since start", labels=["model_name", "layer"])
        bypassed = CounterMetricFamily("shipyard:cache_bypassed", "Requests not eligible or told to skip the cache",
                                       labels=["model_name"])
        prefix_q = CounterMetricFamily("shipyard:prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                                       labels=["model_name"])
        prefix_h = CounterMetricFamily("shipyard:prefix_cache_hits", "Prompt tokens found in the prefix cache",
                                       labels=["model_name"])
        for name, layer in self._layers().items():
            counters = layer.counters
            for kind, asked in counters.queries.items():
                queries.add_metric([name, kind], asked)
                hits.add_metric([name, kind], counters.hits[kind])
                rate.add_metric([name, kind], counters.hits[kind] / asked if asked else 0.0)
            bypassed.add_metric([name], counters.bypassed)
        for name, engine in self.engines().items():
            stats = engine.stats()
            prefix_q.add_metric([name], stats.prefix_cache_queries)
            prefix_h.add_metric([name], stats.prefix_cache_hits)
            rate.add_metric([name, "prefix"], stats.prefix_cache_hits / stats.prefix_cache_queries
                            if stats.prefix_cache_queries else 0.0)
        yield from (queries, hits, rate, bypassed, prefix_q, prefix_h)


def outcome_of(status: int, error_type: str | None, finish_reason: str | None) -> str:
    """A request's outcome in the windows. One definition of an error everywhere (the windows and
    alert rules, the dashboard, the exported PromQL, the SLOs): the server failed it, status 5xx.
    A refusal of the client's request (4xx: invalid, unauthorized, rate limited, gone) is counted
    apart, as `refused:<type>`, and is not an error."""
    if status >= 500:
        return f"error:{error_type}"
    if status >= 400:
        return f"refused:{error_type}"
    return finish_reason or "ok"


class ServingMetrics:
    def __init__(self, engines: Callable[[], dict[str, Engine]], layers: Callable[[], dict] = dict,
                 windows: bool = True, slice_s: float = 10.0, hooks: RequestHooks | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("shipyard:time_to_first_token_seconds", "Time to first token", ["model_name"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("shipyard:inter_token_latency_seconds", "Time between output tokens", ["model_name"],
                             buckets=_ITL_BUCKETS, registry=r)
        self.e2e = Histogram("shipyard:e2e_request_latency_seconds", "End-to-end request latency", ["model_name"],
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("shipyard:request_queue_time_seconds", "Time spent waiting for a batch slot",
                               ["model_name"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("shipyard:prompt_tokens", "Prefilled prompt tokens (not those reused from a cache)",
                                     ["model_name"], registry=r)
        self.generation_tokens = Counter("shipyard:generation_tokens", "Generated tokens", ["model_name"], registry=r)
        self.success = Counter("shipyard:request_success", "Finished requests by finish reason",
                               ["model_name", "finished_reason"], registry=r)
        self.errors = Counter("shipyard:request_errors", "Failed requests by error type and HTTP status",
                              ["model_name", "error_type", "status"], registry=r)
        self._engine_state = _EngineStateCollector(engines, layers)
        self.gauge_sources = self._engine_state.sources
        self._latency = {"ttft": self.ttft, "itl": self.itl, "e2e": self.e2e, "queue": self.queue}
        self.health = HealthWindows(slice_s=slice_s) if windows else None  # off: Prometheus only
        self.hooks = hooks or RequestHooks()  # told when an inference request ends
        r.register(self._engine_state)

    # The request path reports here once; the Prometheus series and the sliding windows both see it.
    # Per-token series (inter-token latency, generated tokens) reach the windows once per request,
    # through `close_request`: the window's cost does not grow with the answer's length.
    def observe_latency(self, model: str, series: str, seconds: float, count: int = 1, window: bool = True) -> None:
        histogram = self._latency[series].labels(model)
        for _ in range(count):
            histogram.observe(seconds)
        if window and self.health is not None:
            self.health.of(model).latency[series].observe(seconds, count)

    def count_tokens(self, model: str, kind: str, tokens: int, window: bool = True) -> None:
        (self.prompt_tokens if kind == "prompt" else self.generation_tokens).labels(model).inc(tokens)
        if window and self.health is not None:
            self.health.of(model).tokens.add(kind, tokens)

    def close_request(self, model: str, gaps: list[tuple[float, int]], generated: int) -> None:
        """A request's inter-token gaps (seconds, tokens) and generated tokens, into the windows."""
        if self.health is not None:
            windows = self.health.of(model)
            windows.latency["itl"].observe_many(gaps)
            if generated:
                windows.tokens.add("generation", generated)

    def model_label(self, name: str | None) -> str:
        """A label value from a model name: a deployment's own, else "unknown" (a client's made-up
        name must not become a new series: Prometheus's memory grows with every one)."""
        if not name:
            return ""
        return name if name in self._engine_state.engines() else "unknown"

    def end_request(self, model: str, outcome: str, tenant: str | None, status: int, ttft_s: float | None,
                    latency_s: float) -> None:
        """An inference request's outcome (finish reason or error), and the listeners (alerting)."""
        # Only deployments that exist: a client naming models at random must not grow the windows.
        if self.health is None or model not in self._engine_state.engines():
            return
        self.health.of(model).outcomes.add(outcome)
        self.hooks.request_ended(RequestEnded(model, tenant, status, ttft_s, latency_s))

    def render(self) -> bytes:
        """This process's metrics; with several server processes (PROMETHEUS_MULTIPROC_DIR set by
        api/workers.py), the counters and histograms of all of them, summed, plus the engine
        state as this process sees it."""
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not folder:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, folder)
        registry.register(self._engine_state)
        return generate_latest(registry)
