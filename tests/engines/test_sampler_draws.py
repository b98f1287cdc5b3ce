"""Unseeded rows are drawn by inverse-CDF sampling: the frequencies follow the distribution, and a
token with no probability (masked by top-k, top-p or a grammar) is never drawn."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from shipyard.engines.base import SamplingParams
from shipyard.engines.transformers_engine.sampler import Sampler


def _rows(n: int, **params) -> list:
    return [SimpleNamespace(params=SamplingParams(**params), generator=None) for _ in range(n)]


def test_unseeded_draws_follow_the_distribution_and_skip_impossible_tokens():
    sampler = Sampler(vocab_size=6, token_text=None)
    probs = torch.tensor([0.1, 0.0, 0.2, 0.0, 0.7, 0.0])
    logits = torch.log(probs).unsqueeze(0).repeat(30_000, 1)  # -inf where impossible
    picks = sampler._sample_rows(logits, _rows(30_000, temperature=1.0))
    counts = torch.bincount(picks, minlength=6).float() / len(picks)
    assert counts[[1, 3, 5]].sum() == 0
    assert torch.allclose(counts, probs, atol=0.015)
    top1 = sampler._sample_rows(logits[:1000], _rows(1000, temperature=1.0, top_k=1))
    assert set(top1.tolist()) == {4}


def test_a_mix_of_seeded_and_unseeded_rows():
    sampler = Sampler(vocab_size=4, token_text=None)
    logits = torch.log(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0]]))
    rows = _rows(2, temperature=1.0)
    rows[0].generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        first, second = sampler._sample_rows(logits, rows).tolist()
        assert first == 2 and second in (0, 1)
