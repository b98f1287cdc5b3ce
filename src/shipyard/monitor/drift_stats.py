"""Drift tests with Evidently's defaults, written with numpy and scipy.

- numeric columns: Kolmogorov–Smirnov (drift when p < 0.05) while the reference has up to 1,000
  rows; above, the Wasserstein distance normed by the reference's standard deviation (≥ 0.1);
- categorical columns: chi-square on the two samples' counts (p < 0.05) up to 1,000 rows;
  above, the Jensen–Shannon distance (≥ 0.1);
- embeddings: a domain classifier (ridge regression on the 384 dimensions, trained on one half of
  the rows and scored on the other, both ways; AUC does not care that the windows differ in size) — drift when its ROC AUC exceeds 0.55;
- new patterns: k-means over the reference embeddings; a row is new when it lies farther from
  every centroid than 99% of held-out reference rows do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# scipy is imported where it is used: it costs over a second at start-up, and most servers never
# compare drift windows.

SMALL_SAMPLE = 1000
P_VALUE = 0.05
DISTANCE = 0.1
AUC_THRESHOLD = 0.55


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | embedding
    test: str  # ks | wasserstein | chi2 | jensenshannon | domain_classifier
    statistic: float
    threshold: float
    drifted: bool

    def view(self) -> dict:
        return {"feature": self.feature, "kind": self.kind, "test": self.test,
                "statistic": round(float(self.statistic), 6), "threshold": self.threshold, "drifted": self.drifted}


def numeric_drift(feature: str, reference: np.ndarray, current: np.ndarray) -> FeatureDrift | None:
    from scipy import stats

    reference, current = reference[~np.isnan(reference)], current[~np.isnan(current)]
    if len(reference) < 2 or len(current) < 2:
        return None
    if len(reference) <= SMALL_SAMPLE:
        p = stats.ks_2samp(reference, current).pvalue
        return FeatureDrift(feature, "numeric", "ks", p, P_VALUE, bool(p < P_VALUE))
    spread = float(np.std(reference)) or 1.0  # Evidently's norm: a constant reference counts raw distance
    distance = stats.wasserstein_distance(reference, current) / spread
    return FeatureDrift(feature, "numeric", "wasserstein", distance, DISTANCE, bool(distance >= DISTANCE))


def categorical_drift(feature: str, reference: np.ndarray, current: np.ndarray) -> FeatureDrift | None:
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    if len(reference) == 0 or len(current) == 0:
        return None
    categories = np.union1d(reference, current)
    ref_counts = np.array([(reference == c).sum() for c in categories], dtype=float)
    cur_counts = np.array([(current == c).sum() for c in categories], dtype=float)
    if len(reference) <= SMALL_SAMPLE:
        if len(categories) < 2:
            return FeatureDrift(feature, "categorical", "chi2", 1.0, P_VALUE, False)
        p = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]))[1]
        return FeatureDrift(feature, "categorical", "chi2", p, P_VALUE, bool(p < P_VALUE))
    distance = float(jensenshannon(ref_counts / ref_counts.sum(), cur_counts / cur_counts.sum(), base=2))
    return FeatureDrift(feature, "categorical", "jensenshannon", distance, DISTANCE, bool(distance >= DISTANCE))


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy import stats

    positive, negative = scores[labels == 1], scores[labels == 0]
    if not len(positive) or not len(negative):
        return 0.5
    return float(stats.mannwhitneyu(positive, negative).statistic / (len(positive) * len(negative)))


def embedding_drift(feature: str, reference: np.ndarray, current: np.ndarray, seed: int = 0,
                    max_rows: int = 2000, ridge: float = 30.0) -> FeatureDrift | None:
    """ROC AUC of a classifier telling current rows from reference ones, on rows it never saw."""
    rng = np.random.default_rng(seed)
    n_ref, n_cur = min(len(reference), max_rows), min(len(current), max_rows)
    if min(n_ref, n_cur) < 20:
        return None
    ref = reference[rng.choice(len(reference), n_ref, replace=False)].astype(np.float64)
    cur = current[rng.choice(len(current), n_cur, replace=False)].astype(np.float64)
    x = np.vstack([ref, cur])
    y = np.concatenate([np.zeros(n_ref), np.ones(n_cur)])
    order = rng.permutation(len(y))
    half = len(y) // 2
    folds = (order[:half], order[half:])
    aucs = []
    for train, test in (folds, folds[::-1]):  # two-fold: every row is scored once, by a model that never saw it
        mean = x[train].mean(axis=0)
        xt = x[train] - mean
        weights = np.linalg.solve(xt.T @ xt + ridge * np.eye(x.shape[1]), xt.T @ (y[train] - y[train].mean()))
        aucs.append(_auc((x[test] - mean) @ weights, y[test]))
    auc = float(np.mean(aucs))
    return FeatureDrift(feature, "embedding", "domain_classifier", auc, AUC_THRESHOLD, bool(auc > AUC_THRESHOLD))


@dataclass
class PatternModel:
    """Clusters of the reference embeddings and the distance beyond which a row is new."""

    centroids: np.ndarray
    threshold: float

    @classmethod
    def fit(cls, embeddings: np.ndarray, clusters: int, seed: int = 0) -> PatternModel | None:
        """Clusters from two thirds of the reference; the threshold from the other third's distances,
        since rows the clusters were fitted on lie closer to them than new rows of the same kind."""
        from scipy.cluster.vq import kmeans2

        if len(embeddings) < clusters * 5:
            return None
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(embeddings))
        cut = len(order) * 2 // 3
        data = embeddings.astype(np.float64)
        centroids, _ = kmeans2(data[order[:cut]], clusters, seed=seed, minit="++")
        distances = cls._nearest(data[order[cut:]], centroids)
        return cls(centroids, float(np.percentile(distances, 99)))

    @staticmethod
    def _nearest(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
        squared = (data ** 2).sum(1)[:, None] - 2 * data @ centroids.T + (centroids ** 2).sum(1)[None, :]
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def novel(self, embeddings: np.ndarray) -> np.ndarray:
        """True for each row farther from every centroid than the reference's 99th percentile."""
        if not len(embeddings):
            return np.zeros(0, dtype=bool)
        return self._nearest(embeddings.astype(np.float64), self.centroids) > self.threshold
