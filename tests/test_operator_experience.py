"""What a new operator tripped over (the fresh-machine issue), each fixed: one definition of the
error rate everywhere; refused calls in the usage records; readable refusals; tenant-admins call
the models; a full queue says so; client-chosen model names never become metric labels; token
strings from /tokenize; admin commands honour -c; deploy on a folder that is no model; eval runs
that retry a refusal and fail when every row failed; the dashboard's money, budgets, names, clock
times, negative axes, error budgets, a tenant's missed objectives and the review export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from conftest import MODEL_NAME, ServerProcess, until
from gateway_support import ADMIN_KEY, AdminClient, call, chat_body, gateway_config


@pytest.fixture(scope="module")
def site(tiny_model, tmp_path_factory):
    config = gateway_config(tiny_model, usage_flush_interval_s=0.1)
    config["monitor"] = {"slos": [{"name": "fast", "deployment": MODEL_NAME, "objective": 0.99, "ttft_ms": 0.001}]}
    with ServerProcess(config, tmp_path_factory.mktemp("operator"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def _cli(site, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHIPYARD_ADMIN_KEY": ADMIN_KEY, **(env or {})}
    env.pop("SHIPYARD_URL", None)
    return subprocess.run([sys.executable, "-m", "shipyard", *args], capture_output=True, text=True, env=env,
                          timeout=300)


# ---------------------------------------------------------------- the error rate, one definition
def test_the_error_rate_is_the_share_of_server_errors_everywhere():
    from shipyard.monitor.export import promql
    from shipyard.monitor.metrics import ServingMetrics, outcome_of

    metrics = ServingMetrics(lambda: {"m": None})
    for status, error_type in ((200, None), (400, "invalid_request_error"), (404, "not_found_error"),
                               (429, "rate_limit_error"), (503, "service_unavailable")):
        metrics.end_request("m", outcome_of(status, error_type, "stop"), "t", status, None, 0.1)
    row = metrics.health.summary(300, {"m": None})[0]
    assert row["requests"] == 5 and row["error_rate"] == pytest.approx(1 / 5)  # only the 503
    assert row["errors"] == {"service_unavailable": 1} and sum(row["refused"].values()) == 3
    assert 'status=~"5.."' in promql("error_rate", "m", 300)  # the exported alert rules and panels too


def test_refused_calls_reach_the_usage_records(site):
    admin = AdminClient(site.base_url)
    key = admin.key(admin.tenant("refusals"))
    assert call(site.base_url, key["key"], "POST", "/v1/chat/completions",
                json={**chat_body(), "model": "no-such-model"}).status_code == 404
    assert call(site.base_url, key["key"], "POST", "/v1/chat/completions",
                json={**chat_body(), "temperature": 9}).status_code == 400

    def requests() -> int:
        rows = admin.get("/admin/usage", params={"key_id": key["id"], "group_by": "model"}).json()["data"]
        return {row["model"]: row["requests"] for row in rows}

    # the invalid body named no model that could be read: its row has none
    until(lambda: requests() == {"no-such-model": 1, "": 1}, 10, "the refused calls' usage rows")


def test_metric_labels_never_take_a_clients_model_name(site):
    for i in range(3):
        call(site.base_url, ADMIN_KEY, "POST", "/v1/completions", json={"model": f"made-up-{i}", "prompt": "x"})
    exposition = call(site.base_url, ADMIN_KEY, "GET", "/metrics").text
    assert "made-up-" not in exposition and 'model_name="unknown"' in exposition


# ---------------------------------------------------------------- refusals a person reads
def test_a_refusal_says_what_the_role_may_do_and_which_role_may(site):
    admin = AdminClient(site.base_url)
    tenant = admin.tenant("roles")
    viewer = admin.key(tenant, role="viewer")["key"]
    refused = call(site.base_url, viewer, "POST", "/v1/chat/completions", json=chat_body())
    message = refused.json()["error"]["message"]
    assert refused.status_code == 403 and "may not call the models" in message and "'developer'" in message
    assert "inference." not in message
    tenant_admin = admin.key(tenant, role="tenant-admin")["key"]
    assert call(site.base_url, tenant_admin, "POST", "/v1/chat/completions", json=chat_body()).status_code == 200


async def test_a_full_queue_of_the_same_tier_says_the_queue_is_full():
    import asyncio

    from shipyard.gateway.admission import TieredAdmission
    from shipyard.gateway.errors import Overloaded

    admission = TieredAdmission(max_inflight=1, max_queue=1, queue_timeout_s=5, retry_after_s=1)
    await admission.enter(0)
    waiting = asyncio.create_task(admission.enter(0))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as same_tier:
        await admission.enter(0)
    assert "queue is full" in str(same_tier.value) and "higher priority" not in str(same_tier.value)
    waiting.cancel()


def test_tokenize_returns_the_token_strings(site):
    response = call(site.base_url, ADMIN_KEY, "POST", "/tokenize", json={"model": MODEL_NAME, "prompt": "def f():"})
    body = response.json()
    assert response.status_code == 200 and len(body["token_strs"]) == len(body["tokens"]) > 0


# ---------------------------------------------------------------- the command line
def test_admin_commands_reach_the_server_a_config_describes(site, tmp_path):
    config = tmp_path / "shipyard.yaml"
    config.write_text(yaml.safe_dump({"server": {"host": "127.0.0.1", "port": site.port}}))
    listed = _cli(site, "tenants", "list", "-c", str(config), "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "system" in [t["id"] for t in json.loads(listed.stdout)]


def test_tables_keep_ids_and_costs_whole_at_80_columns(site):
    admin = AdminClient(site.base_url)
    tenant = admin.tenant("a-tenant-with-a-rather-long-name-for-the-table")
    key = admin.key(tenant)
    assert call(site.base_url, key["key"], "POST", "/v1/chat/completions", json=chat_body()).status_code == 200
    time.sleep(0.5)
    table = _cli(site, "usage", "--tenant", tenant, "--url", site.base_url, env={"COLUMNS": "80"}).stdout
    assert "…" not in table and key["id"] in table.replace("\n", "").replace("│", "").replace(" ", "")


def test_deploy_on_a_folder_that_is_no_model_says_so(site, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text('{"just": "notes"}')
    for path in (tmp_path, tmp_path / "notes"):
        result = _cli(site, "deploy", str(path), "--plan")
        assert result.returncode == 2 and "cannot deploy" in result.stderr + result.stdout
        assert "Traceback" not in result.stderr + result.stdout


def test_eval_run_retries_refusals_and_fails_when_every_row_failed(site, tmp_path):
    admin = AdminClient(site.base_url)
    # an admin key (eval scores are an admin's to write) that runs one request at a time: 4 at once get 429s
    key = admin.key("system", role="admin", max_concurrent=1)["key"]
    dataset = tmp_path / "qa.jsonl"
    dataset.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": f"question {i}", "expected": "x",
                                             "max_tokens": 8}) for i in range(6)) + "\n")
    report = tmp_path / "report.json"
    run = _cli(site, "eval", "run", "--deployment", MODEL_NAME, "--dataset", str(dataset), "-m", "exact",
               "--concurrency", "4", "--report", str(report), "--url", site.base_url, "--key", key)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(report.read_text())["errors"] == 0
    failing = _cli(site, "eval", "run", "--deployment", "no-such-model", "--dataset", str(dataset), "-m", "exact",
                   "--report", str(tmp_path / "failed.json"), "--url", site.base_url)
    assert failing.returncode == 1 and "every row failed" in failing.stdout
    assert "no-such-model" in failing.stdout  # the reason, not only a count


# ---------------------------------------------------------------- the dashboard
def test_money_is_written_with_its_digits():
    from shipyard.units import usd

    assert [usd(v) for v in (0, 4.9e-05, 3.54e-05, 0.5, 1234.5)] == ["$0", "$0.000049", "$0.0000354", "$0.50",
                                                                     "$1,234.50"]


def test_charts_scale_to_phones_read_clock_times_and_keep_negative_values_below_zero():
    import re

    from shipyard.dashboard.charts import line_chart

    svg = line_chart("mean logprob", {"m": [(0, -2.0), (1, -0.5)]}, x_labels=("14:05 UTC", "15:05 UTC"))
    assert 'width="100%"' in svg and "max-width:580px" in svg and "14:05 UTC" in svg
    points = re.search(r'points="([^"]+)"', svg).group(1).split()
    (_, y_worse), (_, y_better) = (map(float, p.split(",")) for p in points)
    assert y_better < y_worse  # −0.5 is drawn above −2 (SVG's y grows downwards)
    ticks = re.findall(r'class="tick"[^>]*>([^<]+)<', svg)
    assert ticks[0].startswith("-2") and ticks[-1] == "0"


def test_an_overspent_error_budget_reads_as_spent():
    from shipyard.dashboard.pages import budget_left

    assert budget_left(0.25) == "25%" and budget_left(-29.3) == "none (spent 30.3×)"


def test_the_cost_page_names_tenants_and_keys_and_shows_budgets(site):
    admin = AdminClient(site.base_url)
    tenant = admin.tenant("acme-corp", budget_usd=5.0, budget_period="day")
    key = admin.key(tenant, name="billing-bot")
    assert call(site.base_url, key["key"], "POST", "/v1/chat/completions", json=chat_body()).status_code == 200
    time.sleep(0.5)
    page = httpx.get(f"{site.base_url}/dashboard/cost", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert "acme-corp" in page.text and "billing-bot" in page.text
    assert "Budgets" in page.text and "$5.00 a day" in page.text
    assert " $<" not in page.text and "e-0" not in page.text  # no "4.9e-05 $"


def test_a_tenant_viewer_sees_its_missed_objective_among_the_alerts(site):
    admin = AdminClient(site.base_url)
    tenant = admin.tenant("slow-tenant")
    developer, viewer = admin.key(tenant)["key"], admin.key(tenant, role="viewer")["key"]
    for _ in range(3):  # a 0.001 ms first-token objective: every request misses it
        assert call(site.base_url, developer, "POST", "/v1/chat/completions", json=chat_body()).status_code == 200
    time.sleep(0.5)
    page = httpx.get(f"{site.base_url}/dashboard/alerts", headers={"authorization": f"Bearer {viewer}"}, timeout=30)
    assert "SLOMissed:fast" in page.text and "Nothing is firing" not in page.text


def test_the_review_export_link_works_from_a_signed_in_session(site):
    session = httpx.post(f"{site.base_url}/dashboard/login", data={"api_key": ADMIN_KEY},
                         timeout=30).cookies["shipyard_dashboard"]
    export = httpx.get(f"{site.base_url}/dashboard/review/export", cookies={"shipyard_dashboard": session},
                       timeout=30)
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/jsonl")
    admin = AdminClient(site.base_url)
    viewer = admin.key(admin.tenant("export-viewer"), role="viewer")["key"]
    refused = httpx.get(f"{site.base_url}/dashboard/review/export", headers={"authorization": f"Bearer {viewer}"},
                        timeout=30)
    assert refused.status_code == 403 and "application/jsonl" not in refused.headers["content-type"]
