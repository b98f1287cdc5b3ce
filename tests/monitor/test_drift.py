"""Drift and new patterns on the real descriptors and MiniLM embeddings: a planted shift (prose
prompts → code prompts; short → long answers) is detected; the same distribution split twice
raises no alarm in at least 18 of 20 seeded trials; a burst of a never-seen kind of request raises
the new-pattern alarm; large windows switch to Wasserstein and Jensen–Shannon as Evidently does."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shipyard.monitor.descriptors import describe, pii_kind, script_of
from shipyard.monitor.drift import DeploymentDrift
from shipyard.monitor.settings import DriftConfig
from traffic import answer, code_prompt, prose_prompt


@pytest.fixture(scope="module")
def embed():
    from shipyard.embeddings import shared_embedder

    return shared_embedder()


@pytest.fixture(scope="module")
def pools(embed):
    """Pre-embedded requests of each kind: (descriptor row, prompt vector, output vector)."""
    rng = random.Random(1)

    def pool(make_prompt, low, high, finish, size):
        prompts = [make_prompt(rng) for _ in range(size)]
        outputs = [answer(rng, low, high) for _ in range(size)]
        vectors = embed(prompts + outputs)
        rows = [describe(p, o, len(p.split()) * 2, len(o.split()), finish, -1.0 + rng.gauss(0, 0.2))
                for p, o in zip(prompts, outputs)]
        return [(row, vectors[i], vectors[size + i]) for i, row in enumerate(rows)]

    return {"prose": pool(prose_prompt, 5, 25, "stop", 1800), "code": pool(code_prompt, 5, 25, "stop", 300),
            "long": pool(prose_prompt, 150, 300, "length", 300)}


def run(reference, current, seed=0, **settings) -> dict:
    config = DriftConfig(deployments=["d"], reference_size=len(reference), current_size=len(current),
                         min_current=10, recent=50, **settings)
    state = DeploymentDrift(config)
    for row, p, o in [*reference, *current]:
        state.add(row, p, o, None)
    return state.evaluate(seed)


def test_the_same_distribution_split_twice_raises_no_alarm_in_18_of_20_trials(pools):
    alarms = 0
    for trial in range(20):
        rng = random.Random(100 + trial)
        sample = rng.sample(pools["prose"], 1500)  # the default windows: 1,000 reference, 500 current
        report = run(sample[:1000], sample[1000:], seed=trial)
        alarms += report["drift_detected"] or report["new_patterns"]["alerting"]
    assert alarms <= 2, alarms


def test_prose_to_code_prompts_is_detected(pools):
    rng = random.Random(5)
    report = run(rng.sample(pools["prose"], 300), rng.sample(pools["code"], 200))
    assert report["drift_detected"] and report["input"]["drifted"]
    assert report["input"]["embedding"]["statistic"] > 0.9
    assert next(f for f in report["input"]["features"] if f["feature"] == "prompt_symbol_share")["drifted"]


def test_short_to_long_answers_is_an_output_shift(pools):
    rng = random.Random(6)
    report = run(rng.sample(pools["prose"], 300), rng.sample(pools["long"], 200))
    assert report["output"]["drifted"] and not report["input"]["drifted"]
    drifted = {f["feature"] for f in report["output"]["features"] if f["drifted"]}
    assert {"output_tokens", "finish_reason"} <= drifted


def test_a_burst_of_a_new_kind_of_request_raises_the_new_pattern_alarm(pools):
    rng = random.Random(7)
    sample = rng.sample(pools["prose"], 400)
    calm = run(sample[:300], sample[300:])
    assert not calm["new_patterns"]["alerting"] and calm["new_patterns"]["share"] < 0.1
    burst = run(sample[:300], sample[300:340] + rng.sample(pools["code"], 30))
    assert burst["new_patterns"]["alerting"] and burst["new_patterns"]["share"] >= 0.4


def test_large_windows_use_distances_and_small_ones_p_values():
    rng = np.random.default_rng(0)
    rows = [describe("hello there", "fine", int(rng.integers(5, 50)), int(rng.integers(5, 50)), "stop", -1.0)
            for _ in range(2600)]
    big = run([(r, None, None) for r in rows[:1500]], [(r, None, None) for r in rows[1500:]], embeddings=False)
    tests = {f["feature"]: f["test"] for f in big["input"]["features"] + big["output"]["features"]}
    assert tests["prompt_tokens"] == "wasserstein" and tests["finish_reason"] == "jensenshannon"
    assert not big["drift_detected"]
    small = run([(r, None, None) for r in rows[:500]], [(r, None, None) for r in rows[500:800]], embeddings=False)
    tests = {f["feature"]: f["test"] for f in small["input"]["features"] + small["output"]["features"]}
    assert tests["prompt_tokens"] == "ks" and tests["finish_reason"] == "chi2"


def test_descriptors():
    assert script_of("Привет, как дела?") == "cyrillic" and script_of("日本語のテキスト") in ("cjk", "hiragana", "katakana")
    assert script_of("1234 !!") == "none" and script_of("hello") == "latin"
    assert pii_kind("mail me at a.b@example.com") == "email" and pii_kind("call +1 415 555 0100") == "phone"
    assert pii_kind("card 4111 1111 1111 1111") == "card" and pii_kind("nothing here") == "none"
    row = describe("def f(x): return x[0]", "I'm sorry, I can't help with that.", 9, 10, "stop", None)
    assert row["refusal"] == "yes" and row["prompt_symbol_share"] > 0.1 and np.isnan(row["mean_logprob"])
