"""Percentiles over a sliding time window, cheap enough for the request path.

Prometheus histograms answer "how many under 0.5 s since start"; operators ask "what was P95
over the last five minutes". A `SlidingHistogram` keeps observations in log-spaced buckets
(DDSketch's idea: every value within ±1% of its bucket's centre, whatever its magnitude), one
sparse bucket map per time slice. A window's percentiles merge the slices it covers, so memory
is bounded by slices × distinct buckets, and an observation is one dict increment.
The clock is injected, so tests drive time exactly.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

GAMMA = 1.02  # bucket width ratio: relative error ≤ (GAMMA - 1) / 2 = 1%
_LOG_GAMMA = math.log(GAMMA)


_ZERO = -(10**9)  # the bucket of zero (and of negative values, which latencies never are)


def _bucket(value: float) -> int:
    return math.floor(math.log(value) / _LOG_GAMMA) if value > 0 else _ZERO


def _centre(bucket: int) -> float:
    if bucket == _ZERO:
        return 0.0
    return 2 * GAMMA ** bucket * GAMMA / (GAMMA + 1)  # the bucket's midpoint in relative terms


class _Slices:
    """Per-slice Counters, the old ones dropped: what both kinds of window share."""

    def __init__(self, slice_s: float, slices: int, clock: Callable[[], float]):
        self.slice_s = slice_s
        self.slices = slices  # the longest window answered: slice_s × slices
        self.clock = clock
        self._data: dict[int, Counter] = {}

    def _current(self) -> tuple[int, Counter]:
        number = int(self.clock() // self.slice_s)
        counts = self._data.get(number)
        if counts is None:
            counts = self._data[number] = Counter()
            for old in [n for n in self._data if n <= number - self.slices]:
                self._dropped(old)
                del self._data[old]
        return number, counts

    def _dropped(self, number: int) -> None:
        pass

    def _covering(self, window_s: float) -> list[int]:
        now = int(self.clock() // self.slice_s)
        first = now - max(1, math.ceil(window_s / self.slice_s)) + 1
        return [n for n in self._data if first <= n <= now]


class SlidingHistogram(_Slices):
    def __init__(self, slice_s: float = 10.0, slices: int = 360, clock: Callable[[], float] = time.monotonic):
        super().__init__(slice_s, slices, clock)
        self._sums: dict[int, float] = {}

    def observe(self, value: float, count: int = 1) -> None:
        number, counts = self._current()
        counts[_bucket(value)] += count
        self._sums[number] = self._sums.get(number, 0.0) + value * count

    def observe_many(self, values: list[tuple[float, int]]) -> None:
        """(value, count) pairs at once: one slice lookup for a request's whole series."""
        if not values:
            return
        number, counts = self._current()
        get, log, width = counts.get, math.log, _LOG_GAMMA  # locals: this loop runs per generated token
        total = 0.0
        for value, count in values:
            bucket = math.floor(log(value) / width) if value > 0 else _ZERO
            counts[bucket] = get(bucket, 0) + count
            total += value * count
        self._sums[number] = self._sums.get(number, 0.0) + total

    def _dropped(self, number: int) -> None:
        self._sums.pop(number, None)

    def summary(self, window_s: float, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict:
        """{count, mean, p50, p95, p99} over the last `window_s` seconds (None without data)."""
        merged: Counter = Counter()
        total = 0.0
        for number in self._covering(window_s):
            merged.update(self._data[number])
            total += self._sums.get(number, 0.0)
        count = sum(merged.values())
        result: dict = {"count": count, "mean": total / count if count else None}
        ordered = sorted(merged.items())
        for q in quantiles:
            result[f"p{round(q * 100):d}"] = _quantile(ordered, count, q) if count else None
        return result


def _quantile(ordered: list[tuple[int, int]], count: int, q: float) -> float:
    rank = q * (count - 1)
    seen = 0
    for bucket, n in ordered:
        seen += n
        if seen > rank:
            return _centre(bucket)
    return _centre(ordered[-1][0])


class SlidingCounter(_Slices):
    """Event counts per time slice, by label: rates and totals over a window."""

    def __init__(self, slice_s: float = 10.0, slices: int = 360, clock: Callable[[], float] = time.monotonic):
        super().__init__(slice_s, slices, clock)

    def add(self, label: str, count: float = 1) -> None:
        self._current()[1][label] += count

    def totals(self, window_s: float) -> Counter:
        merged: Counter = Counter()
        for number in self._covering(window_s):
            merged.update(self._data[number])
        return merged
