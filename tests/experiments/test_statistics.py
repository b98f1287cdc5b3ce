"""The experiments' statistics: on simulated A/A tests looked at after every observation the
false-positive rate stays at α or below (1,000 simulations each); on A/B with a known effect the
power reaches the design's; the Beta-Binomial and sample-ratio figures match hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from shipyard.experiments.statistics import (
    SequentialTest,
    beta_binomial,
    interval_half_width,
    mixture_lr,
    sample_ratio,
)

SIMULATIONS = 1000
ALPHA = 0.05


def _binomial_bound(rate: float, n: int) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / n)  # ≤ α within three standard errors


def _false_positives(draw, paired: bool, looks: int, min_samples: int) -> float:
    rng = np.random.default_rng(7)
    rejected = 0
    for _ in range(SIMULATIONS):
        test = SequentialTest("m", paired=paired, min_samples=min_samples)
        champion, challenger = draw(rng, looks), draw(rng, looks)
        for x, y in zip(champion, challenger):
            if paired:
                test.observe_pair(float(x), float(y))
            else:
                test.observe(0, float(x))
                test.observe(1, float(y))
            if test.result().decision in ("challenger_better", "challenger_worse"):  # a look after each pair
                rejected += 1
                break
    return rejected / SIMULATIONS


@pytest.mark.parametrize("kind", ["continuous", "binary", "paired"])
def test_aa_tests_looked_at_after_every_observation_keep_the_false_positive_rate(kind):
    draws = {"continuous": lambda rng, n: rng.lognormal(0.0, 0.5, n),  # skewed, like latency
             "binary": lambda rng, n: rng.random(n) < 0.2,
             "paired": lambda rng, n: rng.normal(1.0, 1.0, n)}
    rate = _false_positives(draws[kind], kind == "paired", looks=300, min_samples=30)
    assert rate <= _binomial_bound(ALPHA, SIMULATIONS), rate


def test_ab_power_reaches_the_design():
    """Effect 0.3 σ, 400 per arm. The design's power is the chance that the final estimate is past
    the final boundary (a lower bound: crossing earlier only adds)."""
    effect, n, sd = 0.3, 400, 1.0
    variance = 2 * sd ** 2 / n
    tau2 = (0.2 * sd) ** 2
    boundary = interval_half_width(variance, tau2, ALPHA)
    design = norm.cdf((effect - boundary) / math.sqrt(variance)) + norm.cdf((-effect - boundary) / math.sqrt(variance))
    rng = np.random.default_rng(11)
    found = 0
    for _ in range(SIMULATIONS):
        test = SequentialTest("m", min_samples=30)
        for x, y in zip(rng.normal(0.0, sd, n), rng.normal(effect, sd, n)):
            test.observe(0, float(x))
            test.observe(1, float(y))
            if test.result().decision == "challenger_better":
                found += 1
                break
    power = found / SIMULATIONS
    assert design > 0.6 and power >= design - 3 * math.sqrt(design * (1 - design) / SIMULATIONS), (power, design)
    # Nor more than the most powerful level-α test on all n observations could have (Neyman-Pearson's
    # one-sided z-test): an always-valid test that found more would not be holding its α.
    ceiling = norm.cdf(effect / math.sqrt(variance) - norm.ppf(1 - ALPHA))
    assert power <= ceiling + 3 * math.sqrt(ceiling * (1 - ceiling) / SIMULATIONS) + 1e-9, (power, ceiling)


def test_the_interval_is_where_the_likelihood_ratio_stays_under_one_over_alpha():
    variance, tau2 = 0.01, 0.004
    half = interval_half_width(variance, tau2, ALPHA)
    assert float(mixture_lr(half, variance, tau2)) == pytest.approx(1 / ALPHA, rel=1e-9)
    test = SequentialTest("latency", higher_is_better=False, min_samples=10)
    values = [1.0, 1.2, 0.9, 1.1, 1.0, 0.95, 1.05, 1.0, 1.1, 0.9, 1.0, 1.02]
    for value in values:
        test.observe(0, value)
        test.observe(1, value * 2)  # the challenger is twice as slow
    result = test.result()
    assert result.decision == "challenger_worse" and result.effect == pytest.approx(sum(values) / 12)
    assert result.interval[0] < result.effect < result.interval[1] and result.relative == pytest.approx(1.0)
    assert SequentialTest("m").result().decision == "too_few"


def test_beta_binomial_matches_the_posteriors():
    even = beta_binomial([50, 50], [50, 50], seed=1)
    assert even.probability_best[0] == pytest.approx(0.5, abs=0.02) and even.best is None
    clear = beta_binomial([90, 60], [10, 40], seed=1)
    # P(p_A > p_B) for two Betas, by numerical integration
    grid = np.linspace(0, 1, 20001)
    exact = float(np.sum(beta.pdf(grid, 91, 11) * beta.cdf(grid, 61, 41)) * (grid[1] - grid[0]))
    assert clear.probability_best[0] == pytest.approx(exact, abs=0.005) and clear.best == 0
    assert clear.expected_loss[0] < 0.001 < clear.expected_loss[1]
    assert clear.rates == [pytest.approx(91 / 102), pytest.approx(61 / 102)]
    assert beta_binomial([9, 6], [1, 4]).best is None  # too few to decide


def test_sample_ratio_mismatch():
    assert not sample_ratio([5000, 5050], [1, 1]).mismatch
    skewed = sample_ratio([5000, 5500], [1, 1])
    assert skewed.mismatch and skewed.p_value < 1e-5
    assert not sample_ratio([900, 100], [9, 1]).mismatch
    assert sample_ratio([900, 100, 3], [9, 1, 0]).mismatch  # a weight-0 arm got traffic
    assert sample_ratio([0, 0], [1, 1]).p_value == 1.0
