"""Confidence scores: the sampler's per-token logprob and entropy, checked against values
computed by hand, and through the server: each answer's mean/min logprob equal what its own
returned logprobs say, stored as monitor scores of the request."""

from __future__ import annotations

import math
import time

import httpx
import torch

from conftest import MODEL_NAME
from gateway_support import call


def test_the_sampler_measures_logprob_and_entropy(tiny_model):
    from shipyard.engines.base import SamplingParams
    from shipyard.engines.transformers_engine.sampler import Sampler
    from shipyard.engines.transformers_engine.sequence import Sequence

    class Text:
        def get(self, token):
            return str(token), [token]

    sampler = Sampler(4, Text(), confidence=True)
    seq = Sequence("r", 0, [1], SamplingParams(temperature=0), 3, frozenset(), None, None, None)
    rows = [[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]]
    for row in rows:
        sampler(torch.tensor([row]), [seq])

    def by_hand(row):
        z = math.log(sum(math.exp(x) for x in row))
        logprobs = [x - z for x in row]
        return max(logprobs), -sum(math.exp(lp) * lp for lp in logprobs)

    (lp1, h1), (lp2, h2) = by_hand(rows[0]), by_hand(rows[1])
    got = seq.confidence()
    assert got["tokens"] == 2
    assert math.isclose(got["mean_logprob"], (lp1 + lp2) / 2, rel_tol=1e-5)
    assert math.isclose(got["min_logprob"], min(lp1, lp2), rel_tol=1e-5)
    assert math.isclose(got["mean_entropy"], (h1 + h2) / 2, rel_tol=1e-5)


def test_every_answer_gets_its_confidence_scores(server):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "What is a list?"}], "max_tokens": 6,
            "temperature": 0, "logprobs": True, "ignore_eos": True, "cache": {"no-store": True}}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200
    returned = [entry["logprob"] for entry in response.json()["choices"][0]["logprobs"]["content"]]
    request_id = response.headers["x-request-id"]
    scores = {}
    for _ in range(50):  # written in batches, just after the response
        rows = call(server.base_url, None, "GET", f"/admin/scores?request_id={request_id}").json()["data"]
        scores = {r["name"]: r for r in rows}
        if len(scores) == 3:
            break
        time.sleep(0.1)
    assert set(scores) == {"mean_logprob", "min_logprob", "mean_entropy"}
    assert all(r["source"] == "monitor" and r["deployment"] == MODEL_NAME for r in scores.values())
    assert math.isclose(scores["mean_logprob"]["value"], sum(returned) / len(returned), rel_tol=1e-4)
    assert math.isclose(scores["min_logprob"]["value"], min(returned), rel_tol=1e-4)
    assert scores["mean_entropy"]["value"] > 0
