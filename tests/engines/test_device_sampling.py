"""Sampling runs where the logits are (on a GPU: only the chosen ids come back); on a CPU it is
the same code, so the same seeds give the same ids as before the move — these golden ids were
drawn by the sampler as it was when it ran on the host."""

from __future__ import annotations

import torch

from shipyard.engines.base import SamplingParams, Timings
from shipyard.engines.transformers_engine.sampler import Sampler
from shipyard.engines.transformers_engine.sequence import Sequence

GOLDEN = [[31, 55, 26, 11, 10, 17, 36, 46], [3, 16, 4, 0, 8, 31, 52, 18], [30, 19, 42, 62, 12, 16, 16, 11],
          [62, 41, 55, 51, 62, 36, 6, 15], [35, 61, 3, 34, 47, 44, 18, 44], [4, 13, 41, 24, 14, 63, 3, 43]]


class _Text:
    def get(self, token: int):
        return f"t{token}", [116]


def _sequences(device: torch.device) -> list[Sequence]:
    specs = [SamplingParams(temperature=0), SamplingParams(temperature=0.8, seed=7),
             SamplingParams(temperature=1.0, top_k=5, seed=11), SamplingParams(temperature=0.7, top_p=0.9, seed=3),
             SamplingParams(temperature=1.2, top_k=20, top_p=0.8, seed=5),
             SamplingParams(temperature=0.9, presence_penalty=0.5, frequency_penalty=0.3, repetition_penalty=1.3,
                            seed=9),
             SamplingParams(temperature=0, logit_bias={3: 5.0, 17: -100.0}),
             SamplingParams(temperature=1.0, seed=42, logprobs=True, top_logprobs=2)]
    sequences = []
    for i, params in enumerate(specs):
        seq = Sequence(f"r{i}", 0, [1, 2, 3, 4], params, 16, frozenset(), None, None, Timings(0.0))
        if params.seed is not None:
            seq.generator = torch.Generator(device=device).manual_seed(params.seed)
        sequences.append(seq)
    return sequences


def _run(device: torch.device) -> list[list[int]]:
    torch.manual_seed(0)
    sampler = Sampler(64, _Text(), device)
    sequences = _sequences(device)
    drawn = []
    for step in range(6):
        logits = (torch.randn(len(sequences), 70, generator=torch.Generator().manual_seed(100 + step)) * 3).to(device)
        picks = sampler(logits, sequences)
        drawn.append([token for token, _ in picks])
        assert picks[-1][1] is not None and len(picks[-1][1].top) == 2  # logprobs, for the row that asked
        for seq, (token, _) in zip(sequences, picks):
            if seq.needs_penalties:
                if seq.output_counts is None:
                    seq.output_counts = sampler.new_counts()
                seq.output_counts[token] += 1
    return drawn


def test_the_same_seeds_give_the_same_ids_as_the_host_sampler_did():
    assert _run(torch.device("cpu")) == GOLDEN


def test_on_a_gpu_everything_stays_on_the_device():
    import pytest

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the device path runs the same code as the CPU test above")
    drawn = _run(torch.device("cuda"))
    assert len(drawn) == 6 and all(0 <= t < 64 for row in drawn for t in row)
    assert [row[0] for row in drawn] == [row[0] for row in GOLDEN]  # greedy rows agree across devices
