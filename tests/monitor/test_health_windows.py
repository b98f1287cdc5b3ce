"""Sliding-window percentiles: accurate to the bucket width, forgetting what left the window
(driven by an injected clock), and served per deployment by GET /admin/monitor/health."""

from __future__ import annotations

import httpx
import numpy as np

from conftest import MODEL_NAME
from gateway_support import call


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentiles_match_numpy_within_the_bucket_width():
    from shipyard.monitor.window import SlidingHistogram

    values = np.random.default_rng(3).lognormal(mean=-3, sigma=1.2, size=20_000)
    histogram = SlidingHistogram(clock=Clock())
    for value in values:
        histogram.observe(float(value))
    summary = histogram.summary(60)
    assert summary["count"] == len(values)
    assert abs(summary["mean"] - values.mean()) / values.mean() < 1e-9
    for q in (50, 95, 99):
        exact = np.percentile(values, q)
        assert abs(summary[f"p{q}"] - exact) / exact < 0.02, (q, summary[f"p{q}"], exact)


def test_windows_forget_old_slices():
    from shipyard.monitor.window import SlidingCounter, SlidingHistogram

    clock = Clock()
    histogram = SlidingHistogram(slice_s=10, slices=6, clock=clock)
    counter = SlidingCounter(slice_s=10, slices=6, clock=clock)
    histogram.observe(1.0, count=3)
    counter.add("ok", 3)
    clock.now += 30
    histogram.observe(9.0)
    counter.add("error:server_error")
    assert histogram.summary(10)["count"] == 1 and histogram.summary(60)["count"] == 4
    assert counter.totals(10) == {"error:server_error": 1} and counter.totals(60)["ok"] == 3
    clock.now += 60  # everything is older than the longest window now
    histogram.observe(2.0)
    assert histogram.summary(60)["count"] == 1 and histogram.summary(60)["p50"] == pytest_approx(2.0)
    assert SlidingHistogram(clock=clock).summary(60) == {"count": 0, "mean": None, "p50": None, "p95": None,
                                                         "p99": None}


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=0.01)


def test_health_route_reports_each_deployment(server, client):
    for _ in range(4):
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                       temperature=1.0, extra_body={"ignore_eos": True})
    bad = httpx.post(f"{server.base_url}/v1/chat/completions", json={  # past the context window: the engine refuses
        "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6})
    assert bad.status_code == 400
    rows = call(server.base_url, None, "GET", "/admin/monitor/health?window_s=600").json()["data"]
    row = next(r for r in rows if r["deployment"] == MODEL_NAME)
    assert row["requests"] >= 5 and row["outcomes"]["length"] >= 4
    # the client's refused call is counted, apart: the error rate is the server's failures (5xx) only
    assert row["refused"].get("invalid_request_error", 0) >= 1 and row["error_rate"] == 0
    assert row["ttft_s"]["count"] >= 4 and 0 < row["ttft_s"]["p50"] <= row["ttft_s"]["p99"]
    assert row["itl_s"]["count"] >= 8 and row["e2e_s"]["p95"] >= row["ttft_s"]["p50"]
    assert row["generation_tokens"] >= 12 and row["live"]["waiting"] == 0
    assert call(server.base_url, None, "GET", "/admin/monitor/health?deployment=nope").status_code == 404
    for i in range(3):  # unknown models are refused and never get windows of their own
        httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": f"made-up-{i}", "messages": []})
    rows = call(server.base_url, None, "GET", "/admin/monitor/health").json()["data"]
    assert not any(r["deployment"].startswith("made-up") for r in rows)
    assert call(server.base_url, None, "GET", "/admin/monitor/health?window_s=0").status_code == 400


def test_health_is_for_admins_and_metrics_keys(admin, auth_server):
    tenant = admin.tenant("monitored")
    developer = admin.key(tenant)["key"]
    viewer = admin.key(tenant, role="viewer")["key"]
    scraper = admin.key(tenant, role="metrics")["key"]  # global figures: only admins hand these out
    for key in (developer, viewer):
        assert call(auth_server.base_url, key, "GET", "/admin/monitor/health").status_code == 403
    assert call(auth_server.base_url, scraper, "GET", "/admin/monitor/health").status_code == 200
    assert call(auth_server.base_url, None, "GET", "/admin/monitor/health").status_code == 401
