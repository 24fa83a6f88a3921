"""Small, dependency-free statistics on numpy arrays: metrics, calibration, intervals.

    acc = accuracy(labels, probs >= 0.5)
    lo, hi = bootstrap_ci(accuracy, labels, preds, n=1000, seed=0)          # cells resampled
    lo, hi = bootstrap_ci(auroc, labels, probs, groups=slide_of_cell)       # slides resampled
    lo, hi = wilson_interval(8, 10)                                         # (0.4902, 0.9433)
    ece = expected_calibration_error(probs, labels, bins=15)
    moments = RunningMoments(); moments.update(x_chunk); moments.mean, moments.std

Conventions: ``labels`` are integers (binary: 0/1), ``probs`` are P(class 1) with shape (N,) or
class probabilities with shape (N, C). Metrics that are undefined on a sample (AUROC with one
class) return NaN; :func:`bootstrap_ci` ignores NaN replicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of ``preds`` equal to ``labels``."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float(np.mean(labels == preds)) if labels.size else math.nan


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels``."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    classes = np.unique(labels)
    if classes.size == 0:
        return math.nan
    return float(np.mean([np.mean(preds[labels == c] == c) for c in classes]))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUROC (Mann-Whitney U with mid-ranks for ties); NaN unless both classes occur."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each run of equal scores
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # (N,) mid-ranks
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _as_class_probs(probs: np.ndarray) -> np.ndarray:
    """(N,) P(class 1) -> (N, 2); (N, C) unchanged."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        return np.stack([1.0 - probs, probs], axis=1)  # (N, 2)
    return probs


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE (Guo et al. 2017): sum over equal-width confidence bins of
    ``|bin| / N * |accuracy(bin) - mean confidence(bin)|``."""
    p = _as_class_probs(probs)  # (N, C)
    labels = np.asarray(labels).astype(np.int64)
    if labels.size == 0:
        return math.nan
    conf = p.max(axis=1)  # (N,)
    correct = p.argmax(axis=1) == labels  # (N,)
    # bin i holds conf in (i/bins, (i+1)/bins]; conf == 0 cannot occur for a top label
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over rows of ``sum_c (p_c - [y = c])^2`` (binary: twice the squared error of P(1))."""
    p = _as_class_probs(probs)  # (N, C)
    labels = np.asarray(labels).astype(np.int64)
    if labels.size == 0:
        return math.nan
    onehot = np.eye(p.shape[1])[labels]  # (N, C)
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


class RunningMoments:
    """Per-column mean and sd of rows seen in chunks, in float64 (Chan et al.'s pairwise update),
    so the moments of millions of cells need one chunk in memory at a time."""

    def __init__(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None  # (D,)
        self._m2: np.ndarray | None = None  # (D,) sum of squared deviations

    def update(self, x: np.ndarray) -> None:
        """Add the rows of ``x (n, D)``."""
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(axis=0)  # (D,)
        m2 = ((x - mean) ** 2).sum(axis=0)  # (D,)
        if self._mean is None or self._m2 is None:
            self.n, self._mean, self._m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.n * n / total)
        self.n = total

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("RunningMoments: no rows seen")
        return self._mean

    @property
    def std(self) -> np.ndarray:
        """Population sd (ddof 0) per column."""
        if self._m2 is None:
            raise ValueError("RunningMoments: no rows seen")
        return np.sqrt(self._m2 / self.n)


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``metric_fn(*arrays)``.

    Rows of all ``arrays`` are resampled together with replacement; with ``groups`` (one id per
    row) whole groups are resampled instead (cluster bootstrap, e.g. by slide, for rows that are
    not independent). NaN replicates are dropped; all NaN gives ``(nan, nan)``.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    size = arrays[0].shape[0]
    if any(a.shape[0] != size for a in arrays):
        raise ValueError("bootstrap_ci: arrays must have the same number of rows")
    rng = np.random.default_rng(seed)
    if groups is None:
        members = [np.array([i]) for i in range(size)]
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    stats = np.empty(n, dtype=np.float64)
    for i in range(n):
        pick = rng.integers(0, len(members), size=len(members))
        rows = np.concatenate([members[j] for j in pick]) if groups is not None else pick
        stats[i] = metric_fn(*(a[rows] for a in arrays))
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def wilson_interval(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``; ``n == 0`` gives ``(0, 1)``.

    ``k`` and ``n`` may be non-integer (an effective sample size)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def stratified_proportion(
    errors: list[float], sizes: list[int], weights: list[float], z: float = 1.96
) -> tuple[float, tuple[float, float], float]:
    """Population proportion from a stratified sample: ``(estimate, Wilson CI, n_eff)``.

    ``errors[h]`` is the proportion in stratum h's sample of ``sizes[h]`` rows and
    ``weights[h]`` the stratum's share of the population (renormalised to sum to 1).
    estimate = sum_h w_h e_h; var = sum_h w_h^2 e_h (1 - e_h) / n_h; the interval is Wilson's at
    the effective sample size ``n_eff = e (1 - e) / var`` (Kish), or at ``sum n_h`` when the
    variance vanishes (all strata at 0 or 1). Strata with no rows are dropped.
    """
    keep = [h for h, s in enumerate(sizes) if s > 0]
    if not keep:
        return (math.nan, (0.0, 1.0), 0.0)
    w = np.array([weights[h] for h in keep], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("stratified_proportion: stratum weights must not all be zero")
    w = w / w.sum()
    e = np.array([errors[h] for h in keep], dtype=np.float64)
    s = np.array([sizes[h] for h in keep], dtype=np.float64)
    est = float(np.sum(w * e))
    var = float(np.sum(w * w * e * (1 - e) / s))
    n_eff = est * (1 - est) / var if var > 0 else float(s.sum())
    return (est, wilson_interval(est * n_eff, n_eff, z), n_eff)
