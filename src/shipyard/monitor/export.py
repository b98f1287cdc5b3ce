"""For users who run their own Prometheus and Grafana: the same alert rules and SLO burn-rate
alerts as `prometheus-rules.yaml`, and a Grafana dashboard JSON, over Shipyard's `/metrics`.

Every Shipyard metric maps onto PromQL over the `shipyard:` series. SLO TTFT bounds use the
TTFT histogram's bucket at or above the bound (Prometheus only knows bucket edges).
"""

from __future__ import annotations

import bisect

import yaml

from shipyard.monitor.metrics import TTFT_BUCKETS
from shipyard.monitor.settings import SLO, STATS, AlertRule
from shipyard.monitor.sla import BURN_WINDOWS

_HISTOGRAMS = {"ttft": "shipyard:time_to_first_token_seconds", "itl": "shipyard:inter_token_latency_seconds",
               "e2e": "shipyard:e2e_request_latency_seconds", "queue": "shipyard:request_queue_time_seconds"}
_GAUGES = {"queue_depth": "shipyard:num_requests_waiting", "kv_cache_usage": "shipyard:kv_cache_usage_perc",
           "gpu_memory_used_perc": "shipyard:gpu_memory_used_perc",
           "gpu_utilization_perc": "shipyard:gpu_utilization_perc", "drift_share": "shipyard:drift_share",
           "new_pattern_share": "shipyard:new_pattern_share"}


def _selector(deployment: str | None) -> str:
    if deployment is None:
        return ""
    escaped = deployment.replace("\\", "\\\\").replace('"', '\\"')
    return f'model_name="{escaped}"'


def _range(window_s: float) -> str:
    return f"{max(int(window_s), 1)}s"


def _requests(sel: str, span: str) -> str:
    return (f"(sum by (model_name) (rate(shipyard:request_success_total{{{sel}}}[{span}]))"
            f" + sum by (model_name) (rate(shipyard:request_errors_total{{{sel}}}[{span}])))")


def promql(metric: str, deployment: str | None, window_s: float) -> str:
    sel, span = _selector(deployment), _range(window_s)
    series, _, stat = metric.rpartition("_")
    if series in _HISTOGRAMS and stat in STATS:
        name = _HISTOGRAMS[series]
        if stat == "mean":
            return (f"sum by (model_name) (rate({name}_sum{{{sel}}}[{span}])) / "
                    f"sum by (model_name) (rate({name}_count{{{sel}}}[{span}]))")
        quantile = int(stat[1:]) / 100
        return f"histogram_quantile({quantile}, sum by (le, model_name) (rate({name}_bucket{{{sel}}}[{span}])))"
    if metric == "error_rate":  # server errors (5xx), as everywhere (metrics.outcome_of)
        five = f'{sel}, status=~"5.."' if sel else 'status=~"5.."'
        return f"sum by (model_name) (rate(shipyard:request_errors_total{{{five}}}[{span}])) / {_requests(sel, span)}"
    if metric == "requests_per_s":
        return _requests(sel, span)
    if metric == "utilization":
        return f"sum by (model_name) (rate(shipyard:engine_busy_seconds_total{{{sel}}}[{span}]))"
    if metric == "generation_tokens_per_s":
        return f"sum by (model_name) (rate(shipyard:generation_tokens_total{{{sel}}}[{span}]))"
    if metric in _GAUGES:
        return f"{_GAUGES[metric]}{{{sel}}}"
    raise ValueError(f"{metric} has no PromQL form")


def _bad_ratio(slo: SLO, span: str) -> str:
    sel = _selector(slo.deployment)
    five = f"{sel}, status=~\"5..\"" if sel else 'status=~"5.."'
    bad = f"sum(rate(shipyard:request_errors_total{{{five}}}[{span}]))"
    if slo.ttft_ms is not None:
        edges = list(TTFT_BUCKETS)
        edge = edges[min(bisect.bisect_left(edges, slo.ttft_ms / 1000), len(edges) - 1)]
        le = f'{sel}, le="{edge}"' if sel else f'le="{edge}"'
        bad += (f" + (sum(rate(shipyard:time_to_first_token_seconds_count{{{sel}}}[{span}]))"
                f" - sum(rate(shipyard:time_to_first_token_seconds_bucket{{{le}}}[{span}])))")
    total = (f"(sum(rate(shipyard:request_success_total{{{sel}}}[{span}]))"
             f" + sum(rate(shipyard:request_errors_total{{{sel}}}[{span}])))")
    return f"({bad}) / {total}"


def prometheus_rules(rules: list[AlertRule], slos: list[SLO]) -> str:
    alerting = []
    for rule in rules:
        expr = promql(rule.metric, rule.deployment, rule.window_s) if not rule.metric.startswith("slo_") else None
        if expr is None:
            continue  # burn-rate rules are exported from the SLOs below
        for severity, threshold in (("critical", rule.alert), ("warning", rule.warning)):
            if threshold is None:
                continue
            alerting.append({"alert": rule.name, "expr": f"{expr} {rule.operator} {threshold}",
                             "for": f"{int(rule.for_s)}s", "labels": {"severity": severity},
                             "annotations": {"summary": rule.summary or f"{rule.metric} {rule.operator} {threshold}"}})
    for slo in slos:
        budget = 1 - slo.objective
        for window in BURN_WINDOWS:
            long_ratio, short_ratio = _bad_ratio(slo, _range(window.long_s)), _bad_ratio(slo, _range(window.short_s))
            alerting.append({
                "alert": f"SLOBurnRate_{slo.name}",
                "expr": f"({long_ratio}) > ({window.factor} * {budget:g}) and ({short_ratio}) > ({window.factor} * {budget:g})",
                "labels": {"severity": window.severity, "slo": slo.name, "window": window.name},
                "annotations": {"summary": f"SLO {slo.name} burns its error budget {window.factor}× too fast"}})
    groups = [{"name": "shipyard", "rules": alerting}] if alerting else []
    return yaml.safe_dump({"groups": groups}, sort_keys=False, width=1000)


_PANELS = (("Requests per second", "requests_per_s", "reqps"), ("TTFT p95", "ttft_p95", "s"),
           ("TTFT p50", "ttft_p50", "s"), ("End-to-end latency p95", "e2e_p95", "s"),
           ("Inter-token latency p95", "itl_p95", "s"), ("Queue wait p95", "queue_p95", "s"),
           ("Error rate", "error_rate", "percentunit"), ("Queue depth", "queue_depth", "short"),
           ("KV-cache usage", "kv_cache_usage", "percentunit"), ("Generated tokens per second",
                                                               "generation_tokens_per_s", "short"),
           ("GPU memory used", "gpu_memory_used_perc", "percentunit"), ("Drifted feature share", "drift_share",
                                                                         "percentunit"))


def grafana_dashboard() -> dict:
    panels = []
    for i, (title, metric, unit) in enumerate(_PANELS):
        panels.append({"id": i + 1, "type": "timeseries", "title": title,
                       "datasource": {"type": "prometheus", "uid": "${datasource}"},
                       "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                       "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                       "targets": [{"refId": "A", "expr": promql(metric, None, 300).replace("[300s]", "[$__rate_interval]"),
                                    "legendFormat": "{{model_name}}"}]})
    return {"title": "Shipyard", "uid": "shipyard-overview", "schemaVersion": 39, "version": 1,
            "editable": True, "tags": ["shipyard", "llm"], "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s", "panels": panels,
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                     "label": "Prometheus"}]}}
