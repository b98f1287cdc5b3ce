"""Always-valid statistics for experiments: looking at the evidence after every request is safe.

- **mSPRT** (mixture sequential probability ratio test; Johari, Pekelis, Walsh, "Always Valid
  Inference", 2017) for a difference in means, continuous or binary: with the effect's estimate
  ȳ ~ N(θ, s²) and a N(0, τ²) mixture over θ, the likelihood ratio against θ = 0 is

      Λ = sqrt(s² / (s² + τ²)) · exp(τ² ȳ² / (2 s² (s² + τ²)))

  and rejecting when Λ ≥ 1/α keeps the false-positive rate at α however often one looks. The
  always-valid p-value is the running minimum of 1/Λ; the always-valid interval is every θ whose Λ
  stays below 1/α. Two streams (independent arms) take s² = σ_A²/n_A + σ_B²/n_B; a paired stream
  (the same inputs to both) takes s² = var(d)/n of the differences d. Variances are estimated as
  the data come (Welford), and nothing is decided before `min_samples` per arm.
- **Beta-Binomial** for thumbs: each arm's rate has a Beta(1 + ups, 1 + downs) posterior; the
  probability that each arm is best and its expected loss (how much rate one gives up choosing it,
  if it is not the best) come from posterior draws.
- **Sample-ratio mismatch**: a χ² test of the arms' counts against their weights; a mismatch
  (p < 0.001 by default) means the assignment is broken and no result can be trusted.

scipy gives the χ² and Beta distributions; the few lines of mSPRT are here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLES = 100
DEFAULT_MIXING_SD = 0.2  # τ, in units of the metric's standard deviation: a "small" effect (Cohen's d)


def mixture_lr(estimate, variance, tau2):
    """The mSPRT likelihood ratio of an effect estimate with this variance (numpy-friendly)."""
    estimate, variance = np.asarray(estimate, dtype=float), np.asarray(variance, dtype=float)
    total = variance + tau2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.sqrt(variance / total) * np.exp(tau2 * estimate ** 2 / (2 * variance * total))


def interval_half_width(variance: float, tau2: float, alpha: float) -> float:
    """Half the width of the always-valid (1 - α) interval around the estimate."""
    total = variance + tau2
    return math.sqrt(2 * variance * total / tau2 * (math.log(1 / alpha) + 0.5 * math.log(total / variance)))


@dataclass
class Stream:
    """Count, mean and variance of one arm's observations, updated one at a time (Welford)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    @property
    def variance(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


@dataclass
class SequentialResult:
    metric: str
    n: tuple[int, int]  # (champion, challenger); pairs for a paired test
    means: tuple[float, float]
    effect: float  # challenger − champion
    relative: float | None  # effect ÷ the champion's mean
    interval: tuple[float, float] | None  # always valid, (1 − α)
    p_value: float  # always valid
    decision: str  # challenger_better | challenger_worse | inconclusive | too_few


@dataclass
class SequentialTest:
    """Champion (arm 0) against challenger (arm 1) on one metric, mSPRT, peeking allowed.

    `higher_is_better` orients the decision (error rate and latency: lower is better).
    `paired`: observations come as (champion, challenger) pairs on the same input."""

    metric: str
    higher_is_better: bool = True
    paired: bool = False
    alpha: float = DEFAULT_ALPHA
    mixing_sd: float = DEFAULT_MIXING_SD
    min_samples: int = DEFAULT_MIN_SAMPLES
    arms: tuple[Stream, Stream] = field(default_factory=lambda: (Stream(), Stream()))
    differences: Stream = field(default_factory=Stream)
    _p_value: float = 1.0

    def observe(self, arm: int, value: float) -> None:
        self.arms[arm].add(value)

    def observe_pair(self, champion: float, challenger: float) -> None:
        self.arms[0].add(champion)
        self.arms[1].add(challenger)
        self.differences.add(challenger - champion)

    def _estimate(self) -> tuple[float, float, float] | None:
        """(effect, its variance, τ²), or None before there is enough to estimate a variance."""
        a, b = self.arms
        if self.paired:
            d = self.differences
            if d.n < 2:
                return None
            variance, scale2 = d.variance / d.n, d.variance
            effect = d.mean
        else:
            if a.n < 2 or b.n < 2:
                return None
            variance = a.variance / a.n + b.variance / b.n
            scale2 = (a.variance + b.variance) / 2
            effect = b.mean - a.mean
        if variance <= 0:
            variance = scale2 = 1e-12  # identical constant streams: no evidence either way
        return effect, variance, (self.mixing_sd ** 2) * max(scale2, 1e-12)

    def result(self) -> SequentialResult:
        a, b = self.arms
        counts = (self.differences.n, self.differences.n) if self.paired else (a.n, b.n)
        estimate = self._estimate()
        if estimate is None:
            return SequentialResult(self.metric, counts, (a.mean, b.mean), b.mean - a.mean, None, None, 1.0, "too_few")
        effect, variance, tau2 = estimate
        ratio = float(mixture_lr(effect, variance, tau2))
        if min(counts) >= self.min_samples:  # looks before the minimum sample do not count
            self._p_value = min(self._p_value, 1.0 / ratio if ratio > 0 else 1.0)
        half = interval_half_width(variance, tau2, self.alpha)
        decision = "too_few" if min(counts) < self.min_samples else "inconclusive"
        if decision == "inconclusive" and self._p_value <= self.alpha:
            better = effect > 0 if self.higher_is_better else effect < 0
            decision = "challenger_better" if better else "challenger_worse"
        relative = effect / a.mean if a.mean else None
        return SequentialResult(self.metric, counts, (a.mean, b.mean), effect, relative,
                                (effect - half, effect + half), self._p_value, decision)


# ---------------------------------------------------------------- thumbs: Beta-Binomial
@dataclass
class BetaBinomialResult:
    ups: list[int]
    downs: list[int]
    rates: list[float]  # posterior means
    probability_best: list[float]
    expected_loss: list[float]
    best: int | None  # the arm whose expected loss is under the threshold, once each arm has min samples


def beta_binomial(ups: list[int], downs: list[int], loss_threshold: float = 0.001, min_samples: int = 100,
                  draws: int = 20_000, seed: int = 0) -> BetaBinomialResult:
    """Probability each arm has the highest thumbs-up rate, and each arm's expected loss, from
    Beta(1 + ups, 1 + downs) posteriors (uniform priors)."""
    rng = np.random.default_rng(seed)
    samples = np.stack([rng.beta(1 + u, 1 + d, draws) for u, d in zip(ups, downs)])
    best = samples.max(axis=0)
    winners = samples.argmax(axis=0)
    probability = [float(np.mean(winners == arm)) for arm in range(len(ups))]
    loss = [float(np.mean(best - samples[arm])) for arm in range(len(ups))]
    enough = all(u + d >= min_samples for u, d in zip(ups, downs))
    chosen = int(np.argmin(loss)) if enough and min(loss) < loss_threshold else None
    return BetaBinomialResult(list(ups), list(downs), [(1 + u) / (2 + u + d) for u, d in zip(ups, downs)],
                              probability, loss, chosen)


# ---------------------------------------------------------------- sample-ratio mismatch
@dataclass
class SampleRatio:
    counts: list[int]
    expected_shares: list[float]
    p_value: float
    mismatch: bool


def sample_ratio(counts: list[int], weights: list[float], threshold: float = 0.001) -> SampleRatio:
    """χ² goodness of fit of the arms' counts against their weights."""
    from scipy.stats import chisquare

    total, weight = sum(counts), sum(weights)
    shares = [w / weight for w in weights]
    if total == 0:
        return SampleRatio(list(counts), shares, 1.0, False)
    if any(c for c, s in zip(counts, shares) if s == 0):  # an arm weighted 0 got traffic: assignment is broken
        return SampleRatio(list(counts), shares, 0.0, True)
    live = [(c, s) for c, s in zip(counts, shares) if s > 0]
    if len(live) < 2:
        return SampleRatio(list(counts), shares, 1.0, False)
    observed = [c for c, _ in live]
    expected = [s * sum(observed) for _, s in live]
    p_value = float(chisquare(observed, expected).pvalue)
    return SampleRatio(list(counts), shares, p_value, p_value < threshold)


# ---------------------------------------------------------------- a whole history at once
def sequential_history(arms, values, higher_is_better: bool = True, paired: bool = False, metric: str = "",
                       alpha: float = DEFAULT_ALPHA, mixing_sd: float = DEFAULT_MIXING_SD,
                       min_samples: int = DEFAULT_MIN_SAMPLES) -> SequentialResult:
    """The mSPRT result after a whole history, as if it had been looked at after every observation
    (the always-valid p-value is the minimum over every look): what `SequentialTest` gives when fed
    one at a time, in one vectorized pass. Two streams: `arms` (0 champion, 1 challenger) and
    `values` in arrival order. Paired: `values` are the differences (challenger − champion) and
    `arms` the champion's values (for its mean)."""
    values = np.asarray(values, dtype=float)
    if paired:
        n = np.arange(1, len(values) + 1, dtype=float)
        mean = np.cumsum(values) / n
        m2 = np.cumsum(values ** 2) - n * mean ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            var = np.where(n > 1, m2 / (n - 1), 0.0)
            variance, scale2 = var / n, var
        effect, counts = mean, (n, n)
        base = np.asarray(arms, dtype=float)
        means = (float(base.mean()) if len(base) else 0.0, float(base.mean() + mean[-1]) if len(base) else 0.0)
    else:
        arms = np.asarray(arms, dtype=int)
        stats = []
        for arm in (0, 1):
            mask = arms == arm
            n = np.cumsum(mask).astype(float)
            total = np.cumsum(np.where(mask, values, 0.0))
            squares = np.cumsum(np.where(mask, values ** 2, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.where(n > 0, total / n, 0.0)
                var = np.where(n > 1, (squares - n * mean ** 2) / (n - 1), 0.0)
            stats.append((n, mean, np.maximum(var, 0.0)))
        (na, ma, va), (nb, mb, vb) = stats
        with np.errstate(divide="ignore", invalid="ignore"):
            variance = va / na + vb / nb
        scale2, effect, counts = (va + vb) / 2, mb - ma, (na, nb)
        means = (float(ma[-1]) if len(ma) else 0.0, float(mb[-1]) if len(mb) else 0.0)
    if len(values) == 0 or min(counts[0][-1], counts[1][-1]) < 2:
        n_final = (int(counts[0][-1]), int(counts[1][-1])) if len(values) else (0, 0)
        return SequentialResult(metric, n_final, means, means[1] - means[0], None, None, 1.0, "too_few")
    degenerate = variance <= 0
    variance = np.where(degenerate, 1e-12, variance)
    tau2 = (mixing_sd ** 2) * np.maximum(np.where(degenerate, 1e-12, scale2), 1e-12)
    ratio = mixture_lr(effect, variance, tau2)
    looks = (counts[0] >= max(2, min_samples)) & (counts[1] >= max(2, min_samples))
    p_value = float(min(1.0, np.min(1.0 / ratio[looks]))) if looks.any() else 1.0
    final_effect, final_variance, final_tau2 = float(effect[-1]), float(variance[-1]), float(tau2[-1])
    half = interval_half_width(final_variance, final_tau2, alpha)
    n_final = (int(counts[0][-1]), int(counts[1][-1]))
    decision = "too_few" if min(n_final) < min_samples else "inconclusive"
    if decision == "inconclusive" and p_value <= alpha:
        better = final_effect > 0 if higher_is_better else final_effect < 0
        decision = "challenger_better" if better else "challenger_worse"
    relative = final_effect / means[0] if means[0] else None
    return SequentialResult(metric, n_final, means, final_effect, relative,
                            (final_effect - half, final_effect + half), p_value, decision)
