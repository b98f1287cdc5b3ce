"""/metrics parses with prometheus-client's own parser, and the figures move as requests go by."""

from __future__ import annotations

import httpx

from conftest import MODEL_NAME
from test_concurrency import metric_values

LABELS = (("model_name", MODEL_NAME),)


def test_metrics_move_with_requests(server, client):
    before = metric_values(server)
    completion = client.completions.create(model=MODEL_NAME, prompt="hello there", max_tokens=7,
                                           extra_body={"ignore_eos": True})
    stream = list(client.completions.create(model=MODEL_NAME, prompt="hello", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "missing", "messages": [{"role": "user",
                                                                                              "content": "x"}]})
    after = metric_values(server)

    def delta(name, labels=LABELS):
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    usage = stream[-1].usage
    assert delta("shipyard:prompt_tokens_total") == completion.usage.prompt_tokens + usage.prompt_tokens
    assert delta("shipyard:generation_tokens_total") == 12
    assert delta("shipyard:request_success_total", (("finished_reason", "length"), *LABELS)) == 2
    for histogram in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert delta(f"shipyard:{histogram}_count") == 2, histogram
    # 7 + 5 tokens, the first of each timed as TTFT: 10 inter-token gaps
    assert delta("shipyard:inter_token_latency_seconds_count") == 10
    # a model name the client made up is counted as "unknown", never a label of its own
    errors = (("error_type", "not_found_error"), ("model_name", "unknown"), ("status", "404"))
    assert delta("shipyard:request_errors_total", errors) == 1
    assert after[("shipyard:num_requests_running", LABELS)] == 0
    assert after[("shipyard:num_requests_waiting", LABELS)] == 0
    assert 0 <= after[("shipyard:kv_cache_usage_perc", LABELS)] <= 1


def test_health_and_ready(server):
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {MODEL_NAME: True}


def test_one_log_line_per_request(server, client):
    client.completions.create(model=MODEL_NAME, prompt="log me", max_tokens=2, extra_body={"ignore_eos": True},
                              extra_headers={"x-request-id": "log-check-1"})
    server.wait_for_log("log-check-1")
    lines = [line for line in server.log().splitlines() if "log-check-1" in line]
    assert len(lines) == 1
    line = lines[0]
    for field in ("model=tiny", "status=200", "prompt_tokens=", "completion_tokens=2", "ttft_ms=", "latency_ms="):
        assert field in line, line


def test_not_ready_and_unhealthy_when_the_model_cannot_load(tmp_path):
    from conftest import ServerProcess

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    proc = ServerProcess({"auth": "disabled", "deployments": {"broken": {"engine": "transformers",
                                                                          "model": str(broken)}}}, tmp_path)
    try:
        proc.wait_for("/health", 503, timeout=60)
        health = httpx.get(f"{proc.base_url}/health")
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_unhealthy"
        ready = httpx.get(f"{proc.base_url}/ready")
        assert ready.status_code == 503 and ready.json()["models"] == {"broken": False}
        assert ready.headers["retry-after"]
        completion = httpx.post(f"{proc.base_url}/v1/completions", json={"model": "broken", "prompt": "x"})
        assert completion.status_code == 503
    finally:
        proc.stop()
