"""The semantic cache: the default threshold's precision and recall on a labelled set of prompt
pairs (reported, and held above floors), then through the gateway: a paraphrase is answered from
the cache with its similarity, an unrelated prompt is not, another tenant never is."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from conftest import ServerProcess
from fake_upstream import FakeVLLM
from gateway_support import ADMIN_KEY, AdminClient
from paraphrases import HELD_OUT, PAIRS

MODEL = "semantic"


@pytest.fixture(scope="module")
def embedder():
    from shipyard.cache.semantic import Embedder

    return Embedder()


def _precision_recall(embedder, pairs) -> tuple[float, float]:
    from shipyard.cache.semantic import DEFAULT_THRESHOLD

    left, right = embedder([a for a, _, _ in pairs]), embedder([b for _, b, _ in pairs])
    served = (left * right).sum(axis=1) >= DEFAULT_THRESHOLD
    same = np.array([label for _, _, label in pairs])
    return (served & same).sum() / served.sum(), (served & same).sum() / same.sum()


def test_default_threshold_precision_and_recall(embedder):
    """On the pairs the threshold was chosen on (0.93 / 0.73), and on pairs held out from that
    choice (0.85 / 0.46 measured): the held-out figures are the ones to expect."""
    assert len(PAIRS) >= 100 and len(HELD_OUT) >= 40
    assert not {(a, b) for a, b, _ in PAIRS} & {(a, b) for a, b, _ in HELD_OUT}
    tuned, held_out = _precision_recall(embedder, PAIRS), _precision_recall(embedder, HELD_OUT)
    print(f"\nsemantic cache: precision/recall {tuned[0]:.3f}/{tuned[1]:.3f} on the tuning pairs, "
          f"{held_out[0]:.3f}/{held_out[1]:.3f} held out")
    assert tuned[0] >= 0.9 and tuned[1] >= 0.65
    assert held_out[0] >= 0.8 and held_out[1] >= 0.4


def test_lookups_stay_inside_their_partition(embedder):
    from shipyard.cache.semantic import SemanticCache, SemanticCacheConfig

    cache = SemanticCache(SemanticCacheConfig(deployments=["d"], max_entries=3), embedder)
    vectors = embedder(["How do I sort a list in Python?", "How can I sort a list in Python?",
                        "What is the capital of France?"])
    cache.add("tenant-a", "a", "d", vectors[0], b"answer")
    assert cache.lookup("tenant-a", vectors[1]).answer == b"answer"
    assert cache.lookup("tenant-b", vectors[1]) is None and cache.lookup("tenant-a", vectors[2]) is None
    for i in range(5):  # past max_entries the oldest go, and the index forgets them too
        cache.add("tenant-a", "a", "d", vectors[2] * (1 - i / 100), f"{i}".encode())
    assert cache.size() == 3 and cache.lookup("tenant-a", vectors[1]) is None
    cache.invalidate(tenant="a")
    assert cache.size() == 0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    fake = FakeVLLM("up").start()
    config = {"deployments": {MODEL: {"engine": "openai_http", "url": fake.url, "flavor": "vllm",
                                      "upstream_model": "m", "max_model_len": 2048}},
              "cache": {"semantic": {"deployments": [MODEL]}}}
    with ServerProcess(config, tmp_path_factory.mktemp("semantic"), env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        admin = AdminClient(proc.base_url)
        proc.keys = [admin.key(admin.tenant(name))["key"] for name in ("one", "two")]
        proc.fake = fake
        yield proc
    fake.stop()


def _ask(gateway, key: str, content: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 3, "temperature": 0}
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {key}"})


def test_a_paraphrase_is_served_from_the_semantic_cache(gateway):
    import time

    one, two = gateway.keys
    first = _ask(gateway, one, "How do I remove duplicates from a list in Python?")
    assert first.headers["x-shipyard-cache"] == "miss"
    time.sleep(0.3)  # stored (and embedded) just after the response
    calls = len(gateway.fake.requests)
    again = _ask(gateway, one, "How can I delete duplicate items from a Python list?")
    assert again.headers["x-shipyard-cache"] == "semantic"
    assert float(again.headers["x-shipyard-cache-similarity"]) >= 0.9
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert len(gateway.fake.requests) == calls
    assert _ask(gateway, one, "What is the capital of Peru?").headers["x-shipyard-cache"] == "miss"
    assert _ask(gateway, two, "How can I delete duplicate items from a Python list?").headers["x-shipyard-cache"] == "miss"
