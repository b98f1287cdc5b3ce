"""Output quality and hallucination signals, end to end: `shipyard eval run` scores a dataset's
answers into the score store; self-consistency samples the prompt again (near-greedy here, so a
deterministic answer agrees with itself exactly); faithfulness is scored against the request's
reference context by a small NLI model the test builds, and checked against the same model run
here; `shipyard eval hallucination` reports each signal's AUROC. The metrics and AUROC are
checked against hand-computed values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from conftest import MODEL_NAME, ServerProcess, deployment
from gateway_support import ADMIN_KEY, AdminClient, call
from shipyard.evaluation.hallucination import auroc
from shipyard.evaluation.metrics import accuracy, contains, exact, rouge_l, score, token_f1, valid_json
from shipyard.monitor.consistency import consistency_scores

WORDS = "the a sea is blue green sky cat dog paris capital of france london rome".split()


def test_metrics_against_hand_computed_values():
    assert exact("The  Paris!", "paris") == 1.0 and exact("Paris, France", "paris") == 0.0
    assert contains("It is Paris, I think.", "paris") == 1.0
    # "the cat sat" vs "a cat sat down": normalized [cat, sat] vs [cat, sat, down]: P 1, R 2/3 → F1 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # LCS of [x, y, z, w] and [x, z, w, q] is 3: P 3/4, R 3/4 → 0.75
    assert rouge_l("x y z w", "x z w q") == pytest.approx(0.75)
    assert accuracy("The answer is (B), clearly.", "b") == 1.0 and accuracy("C", "B") == 0.0
    assert valid_json('{"a": 1}', "") == 1.0 and valid_json("{a:", "") == 0.0
    assert score("exact", "rome", ["paris", "Rome"]) == 1.0  # the best of several references


def test_auroc_and_consistency_against_hand_computed_values():
    # positives 3, 1 vs negatives 2, 0: pairs above: (3>2, 3>0, 1>0) = 3 of 4
    assert auroc([3.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)
    assert auroc([1.0], [1.0]) == pytest.approx(0.5) and auroc([], [1.0]) is None
    vectors = {"p q r": [1.0, 0.0], "p q": [1.0, 0.0], "x y": [0.0, 1.0]}
    scores = consistency_scores("p q r", ["p q", "x y"], lambda texts: np.array([vectors[t] for t in texts]))
    # unigram F1: ("p q r","p q") = 0.8, ("p q r","x y") = 0; cosine: 1 and 0
    assert scores == {"consistency_unigram": pytest.approx(0.4), "consistency_cosine": pytest.approx(0.5)}


@pytest.fixture(scope="module")
def nli_model(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("nli")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def evaluated(tiny_model, nli_model, tmp_path_factory):
    config = {"deployments": {MODEL_NAME: deployment(tiny_model)}, "gateway": {"usage_flush_interval_s": 0.1},
              "monitor": {"consistency": {"deployments": [MODEL_NAME], "sample": 1.0, "k": 2,
                                          "temperature": 0.0001, "max_tokens": 8},
                          "faithfulness": {"model_path": str(nli_model)}}}
    with ServerProcess(config, tmp_path_factory.mktemp("eval"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


def _scores(proc, request_id: str, names: set[str], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = call(proc.base_url, ADMIN_KEY, "GET", f"/admin/scores?request_id={request_id}").json()["data"]
        found = {r["name"]: r for r in rows}
        if names <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _cli(proc, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHIPYARD_URL": proc.base_url, "SHIPYARD_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run([sys.executable, "-m", "shipyard", "eval", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_eval_run_writes_scores_and_a_report(evaluated, tmp_path):
    dataset = tmp_path / "qa.jsonl"
    dataset.write_text("\n".join(json.dumps(row) for row in [
        {"id": "q1", "prompt": "capital of france", "expected": ["paris", "Paris"], "max_tokens": 4},
        {"id": "q2", "messages": [{"role": "user", "content": "colour of the sea"}], "expected": "blue"},
        {"id": "q3", "prompt": "say anything", "expected": ""}]) + "\n")
    report = tmp_path / "report.json"
    run = _cli(evaluated, "run", "--deployment", MODEL_NAME, "--dataset", str(dataset), "--metric", "exact",
               "--metric", "rougeL", "--metric", "contains", "--max-tokens", "6", "--report", str(report))
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    assert result["rows"] == 3 and result["errors"] == 0 and set(result["metrics"]) == {"exact", "rougeL", "contains"}
    for row in result["results"]:
        stored = _scores(evaluated, row["request_id"], {"eval.exact", "eval.rougeL", "eval.contains"})
        expected = {"q1": ["paris", "Paris"], "q2": ["blue"], "q3": [""]}[row["id"]]
        for metric in ("exact", "rougeL", "contains"):
            assert stored[f"eval.{metric}"]["value"] == pytest.approx(score(metric, row["answer"], expected))
            assert stored[f"eval.{metric}"]["source"] == "eval"
    mean = np.mean([r["scores"]["rougeL"] for r in result["results"]])
    assert result["metrics"]["rougeL"]["mean"] == pytest.approx(mean)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"expected": "x"}\n')
    refused = _cli(evaluated, "run", "-d", MODEL_NAME, "--dataset", str(bad), "-m", "exact")
    assert refused.returncode == 2 and "needs 'messages'" in refused.stdout + refused.stderr
    assert _cli(evaluated, "run", "-d", MODEL_NAME, "--dataset", str(dataset), "-m", "bleu").returncode == 2


def test_consistency_of_a_deterministic_answer_is_one_and_faithfulness_matches_the_nli_model(evaluated, nli_model):
    from shipyard.monitor.faithfulness import FaithfulnessModel

    context = "paris is the capital of france"
    response = httpx.post(f"{evaluated.base_url}/v1/chat/completions", timeout=60,
                          headers={"authorization": f"Bearer {ADMIN_KEY}"},
                          json={"model": MODEL_NAME, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                                "reference_context": context,
                                "messages": [{"role": "user", "content": "what is the capital of france"}]})
    assert response.status_code == 200
    answer = response.json()["choices"][0]["message"]["content"]
    stored = _scores(evaluated, response.headers["x-request-id"],
                     {"consistency_unigram", "consistency_cosine", "faithfulness", "mean_logprob"})
    assert stored["consistency_unigram"]["value"] == pytest.approx(1.0)
    assert stored["consistency_cosine"]["value"] == pytest.approx(1.0, abs=1e-5)
    assert stored["faithfulness"]["value"] == pytest.approx(FaithfulnessModel(str(nli_model))(context, answer),
                                                            abs=1e-5)
    assert context not in (evaluated.log())  # the context is never logged
    plain = httpx.post(f"{evaluated.base_url}/v1/chat/completions", timeout=60,
                       headers={"authorization": f"Bearer {ADMIN_KEY}"},
                       json={"model": MODEL_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert "faithfulness" not in _scores(evaluated, plain.headers["x-request-id"], {"consistency_cosine"})
    too_long = httpx.post(f"{evaluated.base_url}/v1/chat/completions", timeout=60,
                          headers={"authorization": f"Bearer {ADMIN_KEY}"},
                          json={"model": MODEL_NAME, "reference_context": "x" * 200_001,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert too_long.status_code == 400


def test_eval_hallucination_reports_each_signals_auroc(evaluated, tmp_path):
    """The report's AUROC of each signal is the one computed here from the stored scores of the
    same labelled requests (suspicion: a low logprob, consistency or faithfulness; a high entropy)."""
    labelled = tmp_path / "labelled.jsonl"
    rows = [{"prompt": f"tell me about {w}", "hallucinated": i % 2 == 0,
             "reference_context": f"the {w} is blue"} for i, w in enumerate(["sea", "sky", "cat", "dog"])]
    labelled.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = _cli(evaluated, "hallucination", "--labelled", str(labelled), "--deployment", MODEL_NAME,
               "--max-tokens", "6", "--report", str(tmp_path / "served.json"))
    assert run.returncode == 0, run.stdout + run.stderr  # prompts served by the command itself
    assert json.loads((tmp_path / "served.json").read_text())["errors"] == 0
    signals = {"mean_logprob": True, "min_logprob": True, "mean_entropy": False, "consistency_unigram": True,
               "consistency_cosine": True, "faithfulness": True}  # name → lower is suspicious
    served = []
    for i, row in enumerate(rows * 2):  # 8 requests of the test's own, their scores read back below
        response = httpx.post(f"{evaluated.base_url}/v1/chat/completions", timeout=60,
                              headers={"authorization": f"Bearer {ADMIN_KEY}", "x-shipyard-evaluate": "consistency",
                                       "cache-control": "no-store"},  # generated now: its own signals
                              json={"model": MODEL_NAME, "max_tokens": 3 + i, "temperature": 0,
                                    "reference_context": row["reference_context"],
                                    "messages": [{"role": "user", "content": row["prompt"]}]})
        assert response.status_code == 200
        found = _scores(evaluated, response.headers["x-request-id"], set(signals))
        served.append((response.headers["x-request-id"], i % 3 == 0, {n: found[n]["value"] for n in signals}))
    labelled.write_text("\n".join(json.dumps({"request_id": rid, "hallucinated": h}) for rid, h, _ in served) + "\n")
    report = tmp_path / "auroc.json"
    run = _cli(evaluated, "hallucination", "--labelled", str(labelled), "--report", str(report))
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(report.read_text())
    assert result["errors"] == 0 and "AUROC" in run.stdout
    for name, lower_is_suspicious in signals.items():
        sign = -1.0 if lower_is_suspicious else 1.0
        positives = [sign * values[name] for _, hallucinated, values in served if hallucinated]
        negatives = [sign * values[name] for _, hallucinated, values in served if not hallucinated]
        signal = result["signals"][name]
        assert (signal["hallucinated"], signal["faithful"]) == (3, 5), name
        assert signal["auroc"] == pytest.approx(auroc(positives, negatives)), name


def test_only_admins_may_ask_for_a_check(evaluated):
    admin = AdminClient(evaluated.base_url)
    key = admin.key(admin.tenant("evals"))["key"]
    # a developer's header is ignored (the deployment's own sampling still applies: sample is 1.0 here)
    response = httpx.post(f"{evaluated.base_url}/v1/chat/completions", timeout=60,
                          headers={"authorization": f"Bearer {key}", "x-shipyard-evaluate": "consistency"},
                          json={"model": MODEL_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert call(evaluated.base_url, key, "POST", "/admin/scores",
                json=[{"request_id": response.headers["x-request-id"], "name": "eval.exact", "value": 1.0,
                       "source": "eval"}]).status_code == 400
