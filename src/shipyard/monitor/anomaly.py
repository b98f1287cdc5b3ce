"""Anomalies with no threshold to set: EWMA z-scores per series (deployment × tenant × metric).

Requests feed per-interval sums; at each evaluation the interval's mean is compared with the
series' exponentially weighted mean and deviation. A series alerts only after `min_samples`
intervals of history, when |z| ≥ `z_fire` for `consecutive` intervals, and resolves when
|z| < `z_resolve` (hysteresis: no flapping around one threshold). While a series is anomalous its
baseline is frozen, so a long incident does not become the new normal. The deviation has a floor
(a share of the mean): a very steady series would otherwise call a small wobble a z of 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shipyard.monitor.settings import AnomalyConfig


@dataclass
class _Baseline:
    mean: float = 0.0
    var: float = 0.0
    samples: int = 0
    streak: int = 0  # anomalous intervals in a row
    anomalous: bool = False


@dataclass
class Detection:
    series: tuple[str, str, str]  # deployment, tenant, metric
    value: float
    z: float
    expected: float
    anomalous: bool  # the series' state after this interval


@dataclass
class AnomalyDetector:
    settings: AnomalyConfig
    _sums: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    _baselines: dict[tuple[str, str, str], _Baseline] = field(default_factory=dict)

    def observe(self, deployment: str, tenant: str, metric: str, value: float) -> None:
        key = (deployment, tenant, metric)
        pair = self._sums.get(key)
        if pair is None:
            if key not in self._baselines:
                if len(self._baselines) >= self.settings.max_series:
                    return  # bounded: a client inventing tenants or models cannot grow this
                self._baselines[key] = _Baseline()
            pair = self._sums[key] = [0.0, 0]
        pair[0] += value
        pair[1] += 1

    def tick(self) -> list[Detection]:
        """Close the interval: one detection per series that had requests in it."""
        sums, self._sums = self._sums, {}
        s = self.settings
        detections = []
        for key, (total, count) in sums.items():
            value = total / count
            base = self._baselines.setdefault(key, _Baseline())
            if base.samples == 0:
                base.mean, base.samples = value, 1
                continue
            spread = max(math.sqrt(base.var), s.relative_floor * abs(base.mean), 1e-9)
            z = (value - base.mean) / spread
            ready = base.samples >= s.min_samples
            if ready and abs(z) >= s.z_fire:
                base.streak += 1
                if base.streak >= s.consecutive:
                    base.anomalous = True
            elif abs(z) < s.z_resolve:
                base.streak = 0
                base.anomalous = False
            else:
                base.streak = 0  # between the thresholds: keeps its state (hysteresis)
            if not base.anomalous and base.streak == 0:
                diff = value - base.mean
                base.mean += s.alpha * diff
                base.var = (1 - s.alpha) * (base.var + s.alpha * diff * diff)
                base.samples += 1
            if ready:
                detections.append(Detection(key, value, z, base.mean, base.anomalous))
        return detections
