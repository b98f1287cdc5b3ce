"""Shadow pairs are compared in batches: concurrent pairs share embedding calls, a lone pair is
still answered within the batching wait, and every pair gets its own cosine back."""

from __future__ import annotations

import asyncio

import numpy as np

from shipyard.experiments.comparison import PairComparer


class CountingEmbedder:
    """Vectors that encode each text's length, so each pair's cosine is known; counts the calls."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        vectors = np.array([[1.0, len(t) / 10.0] for t in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _cosine(a: str, b: str) -> float:
    u, v = np.array([1.0, len(a) / 10]), np.array([1.0, len(b) / 10])
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


async def test_pairs_share_embedding_calls_and_each_gets_its_own_cosine():
    embedder = CountingEmbedder()
    comparer = PairComparer(lambda: embedder, batch_size=16, max_wait_s=0.2)
    try:
        pairs = [("a" * i, "b" * (2 * i)) for i in range(1, 41)]
        results = await asyncio.wait_for(asyncio.gather(*(comparer.compare(a, b) for a, b in pairs)), 10)
        assert np.allclose([r["shadow.cosine"] for r in results], [_cosine(a, b) for a, b in pairs], atol=1e-12)
        assert len(embedder.calls) == 3 and max(embedder.calls) == 32  # 16 + 16 + 8 pairs
        for _ in range(3):  # one at a time: each still answered, after the batching wait at most
            alone = await asyncio.wait_for(comparer.compare("same", "same"), 2)
            assert alone["shadow.exact_match"] == 1.0 and abs(alone["shadow.cosine"] - 1.0) < 1e-9
    finally:
        await comparer.stop()


async def test_without_an_embedder_the_other_comparisons_still_count():
    def broken():
        raise OSError("no model here")

    comparer = PairComparer(broken, max_wait_s=0.05)
    try:
        scores = await asyncio.wait_for(comparer.compare("x", "xyz"), 5)
        assert scores == {"shadow.exact_match": 0.0, "shadow.length_ratio": 3.0}
    finally:
        await comparer.stop()


async def test_pairs_past_max_pending_are_shed_not_queued():
    import time

    embedder = CountingEmbedder()

    def slow():
        time.sleep(0.3)  # a helper starved of CPU
        return embedder

    comparer = PairComparer(slow, batch_size=4, max_wait_s=0.01, max_pending=4)
    try:
        results = await asyncio.wait_for(asyncio.gather(*(comparer.compare("a", "b") for _ in range(20))), 10)
        embedded = sum("shadow.cosine" in r for r in results)
        assert embedded == comparer.counts["embedded"] and comparer.counts["shed"] == 20 - embedded
        assert 4 <= embedded < 20 and all("shadow.exact_match" in r for r in results)
    finally:
        await comparer.stop()
