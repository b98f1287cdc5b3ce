"""The alert core, driven by hand: rule states (pending, firing, severity, resolved, reminders),
EWMA anomalies with hysteresis, the webhook body's Alertmanager v4 shape and its signature, and the
PromQL of the exported rules and dashboard."""

from __future__ import annotations

import json
import random

import promql_parser
import pytest
import yaml

from shipyard.monitor.alerts import AlertBook, evaluate_rule
from shipyard.monitor.anomaly import AnomalyDetector
from shipyard.monitor.export import grafana_dashboard, prometheus_rules
from shipyard.monitor.notify import payload, sign, verify
from shipyard.monitor.settings import SLO, WINDOW_METRICS, AlertRule, AnomalyConfig, MonitorConfig


def rule(**fields) -> AlertRule:
    return AlertRule.model_validate({"name": "slow", "metric": "e2e_p95", "warning": 1.0, "alert": 2.0, **fields})


def test_a_rule_fires_after_its_for_duration_changes_severity_and_resolves_once():
    book, r = AlertBook(repeat_interval_s=100), rule(for_s=10)
    assert evaluate_rule(book, r, "demo", 1.5, now=0) == []  # pending
    assert evaluate_rule(book, r, "demo", 1.5, now=5) == []
    [fired] = evaluate_rule(book, r, "demo", 1.5, now=10)
    assert fired.status == "firing" and fired.labels["severity"] == "warning" and fired.starts_at == 10
    assert evaluate_rule(book, r, "demo", 1.6, now=11) == []  # no duplicate
    [worse] = evaluate_rule(book, r, "demo", 3.0, now=12)
    assert worse.labels["severity"] == "critical" and worse.starts_at == 10
    assert worse.fingerprint == fired.fingerprint  # one alert, whatever its severity
    [reminder] = evaluate_rule(book, r, "demo", 3.0, now=112)
    assert reminder.repeat == 1
    [resolved] = evaluate_rule(book, r, "demo", 0.5, now=113)
    assert resolved.status == "resolved" and resolved.ends_at == 113
    assert evaluate_rule(book, r, "demo", 0.5, now=114) == []
    assert book.active() == []


def test_a_condition_that_clears_while_pending_is_never_sent_and_no_data_follows_the_rule():
    book = AlertBook()
    r = rule(for_s=10)
    assert evaluate_rule(book, r, "demo", 1.5, now=0) == []
    assert evaluate_rule(book, r, "demo", 0.1, now=5) == []
    assert evaluate_rule(book, r, "demo", 1.5, now=6) == []  # the pending clock restarted
    assert evaluate_rule(book, r, "demo", 1.5, now=15) == []
    assert evaluate_rule(book, rule(for_s=0, no_data="alerting", name="silent"), "demo", None, now=0)[0].status == "firing"
    kept = rule(for_s=0, no_data="keep", name="kept")
    assert evaluate_rule(book, kept, "demo", 5.0, now=0)[0].status == "firing"
    assert evaluate_rule(book, kept, "demo", None, now=1) == []  # keeps firing
    assert evaluate_rule(book, rule(for_s=0, name="kept"), "demo", None, now=2)[0].status == "resolved"


def test_rules_are_validated():
    for bad in ({"metric": "nonsense"}, {"warning": None, "alert": None}, {"operator": "=="},
                {"window_s": 0}, {"name": "has space"}):
        with pytest.raises(ValueError):
            rule(**bad)
    assert rule(metric="slo_burn_rate:chat").metric == "slo_burn_rate:chat"
    with pytest.raises(ValueError):
        MonitorConfig.model_validate({"alerts": {"rules": [rule().model_dump(), rule().model_dump()]}})


def test_ewma_fires_on_a_spike_after_min_samples_with_hysteresis_and_no_false_alarm_on_noise():
    detector = AnomalyDetector(AnomalyConfig(min_samples=20, consecutive=2, z_fire=4, z_resolve=2,
                                             relative_floor=0.25))
    rng = random.Random(7)
    states = []
    for step in range(200):  # steady noisy latency: never anomalous
        detector.observe("demo", "t1", "e2e", rng.gauss(0.1, 0.01))
        states += [d.anomalous for d in detector.tick()]
    assert states and not any(states)
    detector.observe("demo", "t1", "e2e", 1.0)
    [first] = detector.tick()
    assert first.z > 4 and not first.anomalous  # one interval is not enough
    detector.observe("demo", "t1", "e2e", 1.0)
    [second] = detector.tick()
    assert second.anomalous and second.expected == pytest.approx(0.1, rel=0.1)  # baseline frozen
    detector.observe("demo", "t1", "e2e", 0.16)  # z between the thresholds: still anomalous
    assert detector.tick()[0].anomalous
    detector.observe("demo", "t1", "e2e", 0.1)
    assert not detector.tick()[0].anomalous


def test_anomaly_series_are_bounded():
    detector = AnomalyDetector(AnomalyConfig(max_series=3))
    for tenant in range(10):
        detector.observe("demo", f"t{tenant}", "e2e", 0.1)
    detector.tick()
    assert len(detector._baselines) == 3


def test_the_webhook_body_is_alertmanager_v4_and_signed():
    book = AlertBook()
    [event] = evaluate_rule(book, rule(), "demo", 1.5, now=1_700_000_000)
    body = payload(event, "ops", "http://127.0.0.1:8000")
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "ops"
    assert set(body) == {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
                         "commonLabels", "commonAnnotations", "externalURL", "alerts"}
    [alert] = body["alerts"]
    assert set(alert) == {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
    assert alert["startsAt"] == "2023-11-14T22:13:20Z" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["labels"]["alertname"] == "slow" and alert["labels"]["severity"] == "warning"
    raw = json.dumps(body).encode()
    header = sign(b"k" * 32, 1_700_000_000, raw)
    assert verify(b"k" * 32, header, raw, now=1_700_000_010)
    assert not verify(b"x" * 32, header, raw, now=1_700_000_010)
    assert not verify(b"k" * 32, header, raw + b" ", now=1_700_000_010)
    assert not verify(b"k" * 32, header, raw, now=1_700_009_999)  # a replay, too late
    assert not verify(b"k" * 32, "garbage", raw)


def test_exported_rules_and_dashboard_are_valid_promql():
    rules = [rule(metric=m, name=f"r{i}", deployment="de\"mo" if i % 2 else None) for i, m in enumerate(WINDOW_METRICS)]
    text = prometheus_rules(rules, [SLO(name="chat", deployment="demo", ttft_ms=500), SLO(name="all")])
    groups = yaml.safe_load(text)["groups"]
    alerting = groups[0]["rules"]
    assert len(alerting) == 2 * len(WINDOW_METRICS) + 2 * 3
    for item in alerting:
        promql_parser.parse(item["expr"])
        assert item["labels"]["severity"] in ("warning", "critical", "page", "ticket")
    assert 'le="0.5"' in next(r["expr"] for r in alerting if r["alert"] == "SLOBurnRate_chat")
    dashboard = grafana_dashboard()
    for panel in dashboard["panels"]:
        promql_parser.parse(panel["targets"][0]["expr"].replace("$__rate_interval", "5m"))


def test_the_cli_exports_the_configured_rules(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "shipyard.yaml"
    config.write_text(yaml.safe_dump({"monitor": {"slos": [{"name": "chat", "ttft_ms": 500}],
                                                  "alerts": {"rules": [rule().model_dump()]}}}))
    run = subprocess.run([sys.executable, "-m", "shipyard", "monitor", "export", "-c", str(config), "-o",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    names = {r["alert"] for r in yaml.safe_load((tmp_path / "out" / "prometheus-rules.yaml").read_text())
             ["groups"][0]["rules"]}
    assert names == {"slow", "SLOBurnRate_chat"}
    assert json.loads((tmp_path / "out" / "grafana-dashboard.json").read_text())["uid"] == "shipyard-overview"
