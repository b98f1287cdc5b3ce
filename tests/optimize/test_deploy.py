"""`shipyard deploy`: --plan prints and exits; a deploy converts (once), verifies, writes the
deployment and its plan, and what it wrote serves through the gateway."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest
import yaml

from conftest import ServerProcess
from gateway_support import ADMIN_KEY, call


def _deploy(*args: str, data_dir, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHIPYARD_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "shipyard", "deploy", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def _serve_and_read_plan(config: dict, name: str, data_dir, workdir) -> dict:
    """Serve what deploy wrote; the deployment answers, and its saved plan is on the admin API."""
    with ServerProcess(config, workdir, env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY, "SHIPYARD_DATA_DIR": str(data_dir)}
                       ) as server:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=ADMIN_KEY, max_retries=0) as client:
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=4)
            assert 1 <= reply.usage.completion_tokens <= 4
        assert call(server.base_url, ADMIN_KEY, "GET", "/admin/deployments/nope/plan").status_code == 404
        return call(server.base_url, ADMIN_KEY, "GET", f"/admin/deployments/{name}/plan").json()


def test_plan_prints_and_exits_without_converting(tiny_model, tmp_path):
    result = _deploy(str(tiny_model), "--plan", "--no-measure", data_dir=tmp_path / "data", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for field in ("engine", "precision", "KV cache", "max_num_seqs", "max_model_len", "transformers", "fp32"):
        assert field in result.stdout
    assert "int8 would not pay" in result.stdout  # the why
    assert not (tmp_path / "shipyard.yaml").exists() and not (tmp_path / "data").exists()


def test_a_gpu_only_choice_on_a_cpu_is_a_clear_refusal(tiny_model, tmp_path):
    result = _deploy(str(tiny_model), "--optimize", "fp8", "--plan", data_dir=tmp_path / "data", cwd=tmp_path)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr


def test_measured_plan_has_a_row_per_candidate_and_a_second_deploy_is_instant(tiny_model, tmp_path):
    from shipyard.optimize.measure import OBJECTIVES

    first = _deploy(str(tiny_model), "--plan", "--remeasure", data_dir=tmp_path / "data", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = [line for line in first.stdout.splitlines() if "/" in line and " t" in line and "│" in line]
    labels = {row.split("│")[2].strip() for row in rows}
    assert {"transformers/fp32 t1 s16", "llamacpp/gguf-q8_0 t1 s16", "llamacpp/gptq t1 s16",
            "llamacpp/awq t1 s16"} <= labels
    assert sum("→" in row for row in rows) == 1 and "chose " in first.stdout
    for row in rows:  # every measured row has its speeds and its perplexity
        cells = [c.strip() for c in row.split("│")]
        assert float(cells[3].replace(",", "")) > 0 and float(cells[7]) > 0
    assert not (tmp_path / "shipyard.yaml").exists() and not (tmp_path / "data").exists()
    for objective in OBJECTIVES:  # from the cache: nothing is measured again
        again = _deploy(str(tiny_model), "--plan", "--objective", objective, data_dir=tmp_path / "data", cwd=tmp_path)
        assert again.returncode == 0 and "measured earlier on this machine" in again.stdout
        assert f"for {objective}" in again.stdout
    bad = _deploy(str(tiny_model), "--plan", "--objective", "vibes", data_dir=tmp_path / "data", cwd=tmp_path)
    assert bad.returncode == 2


def test_measured_deploy_writes_what_it_measured_and_it_serves(tiny_model, tmp_path):
    data_dir = tmp_path / "data"
    result = _deploy(str(tiny_model), "--objective", "latency", "--no-serve", "--name", "fast", data_dir=data_dir,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    deployment = yaml.safe_load((tmp_path / "shipyard.yaml").read_text())["deployments"]["fast"]
    assert deployment["engine"] in ("transformers", "llamacpp") and deployment["num_threads"] >= 1
    plan = _serve_and_read_plan({"deployments": {"fast": deployment}}, "fast", data_dir, tmp_path)
    assert any("for latency" in reason for reason in plan["plan"]["reasons"])


def test_deploy_to_gguf_verifies_writes_and_serves(tiny_model, tmp_path):
    data_dir = tmp_path / "data"
    result = _deploy(str(tiny_model), "--optimize", "gguf-q8_0", "--no-serve", data_dir=data_dir, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verification: gguf-q8_0 lost" in result.stdout
    config = yaml.safe_load((tmp_path / "shipyard.yaml").read_text())
    deployment = config["deployments"]["tiny"]
    assert deployment["engine"] == "llamacpp" and deployment["model"].endswith("-q8_0.gguf")
    assert deployment["tokenizer"] == str(tiny_model)
    converted = os.stat(deployment["model"]).st_mtime_ns
    again = _deploy(str(tiny_model), "--optimize", "gguf-q8_0", "--no-serve", data_dir=data_dir, cwd=tmp_path)
    assert again.returncode == 0 and os.stat(deployment["model"]).st_mtime_ns == converted  # cached by content hash
    plan = _serve_and_read_plan(config, "tiny", data_dir, tmp_path)
    assert plan["plan"]["precision"] == "gguf-q8_0" and plan["verification"][0]["kept"] is True
    assert plan["verification"][0]["loss_pct"] <= 2.0


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", ".hidden"])
def test_plan_names_cannot_leave_the_plans_folder(tmp_path, name):
    from shipyard.optimize.deploy import load_plan

    (tmp_path / "secret.json").write_text("{}")
    assert load_plan(tmp_path / "data", name) is None
