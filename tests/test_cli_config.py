"""`shipyard serve --model PATH --log-format json`, and the YAML configuration."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from conftest import ServerProcess
from shipyard.config import ShipyardConfig


def test_serve_model_flag_with_json_logs(tiny_model, tmp_path):
    proc = ServerProcess({"auth": "disabled"}, tmp_path, extra_args=["--model", str(tiny_model), "--served-model-name", "flagged",
                                                   "--log-format", "json"])
    try:
        proc.wait_ready()
        models = httpx.get(f"{proc.base_url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["flagged"]
        httpx.post(f"{proc.base_url}/v1/completions", json={"model": "flagged", "prompt": "x", "max_tokens": 2, "ignore_eos": True},
                   headers={"x-request-id": "json-log-1"})
        proc.wait_for_log('"request_id":"json-log-1"')
    finally:
        proc.stop()
    records = [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("request_id") == "json-log-1"]
    assert len(access) == 1
    assert access[0]["model"] == "flagged" and access[0]["status"] == 200
    assert access[0]["completion_tokens"] == 2 and access[0]["ttft_ms"] > 0


def test_config_defaults_and_yaml(tmp_path):
    assert ShipyardConfig().server.port == 8000
    path = tmp_path / "shipyard.yaml"
    path.write_text("server: {port: 9001, log_format: json}\n"
                    "deployments:\n  m1: {engine: transformers, model: /models/a, max_num_seqs: 4}\n")
    cfg = ShipyardConfig.load(path)
    assert cfg.server.port == 9001 and cfg.deployments["m1"].max_num_seqs == 4
    assert cfg.deployments["m1"].num_threads == 1
    cfg2 = cfg.with_model("/models/b", "m2")
    assert set(cfg2.deployments) == {"m1", "m2"}


def test_config_rejects_unknown_fields(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("deployments:\n  m1: {engine: transformers, model: /x, max_num_sequences: 4}\n")
    with pytest.raises(ValidationError):
        ShipyardConfig.load(path)


def test_embedding_models_from_the_command_line_and_yaml(tmp_path):
    from shipyard.engines.embedding_engine import builtin_model_path

    folder = tmp_path / "my-embedder"
    folder.mkdir()
    config = ShipyardConfig().with_embedding_model("builtin").with_embedding_model(str(folder))
    assert config.embeddings["shipyard-embed"].model == "builtin"  # the shipped MiniLM, by its own name
    assert config.embeddings["my-embedder"].model == str(folder)  # a folder, under its folder's name
    assert builtin_model_path().endswith("model")
    path = tmp_path / "shipyard.yaml"
    path.write_text("deployments: {}\nembeddings:\n  bge: {model: /models/bge, dimensions: [256, 128]}\n")
    assert ShipyardConfig.load(path).embeddings["bge"].dimensions == [256, 128]
    path.write_text("deployments:\n  same: {model: /m}\nembeddings:\n  same: {model: builtin}\n")
    with pytest.raises(ValidationError, match="name both a deployment and an embedding model"):
        ShipyardConfig.load(path)
