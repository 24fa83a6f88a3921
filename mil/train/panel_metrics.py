"""Per-target metrics of multi-label predictions: AUROC, average precision and balanced accuracy
at a threshold, each with a 95% bootstrap interval over the slides whose label is known, plus
their macro means over the targets (the interval of a macro mean resamples whole slides).

``y (n, T)`` holds 1, 0 or NaN (unknown: the slide is left out for that target); ``p (n, T)``
are per-target probabilities; ``calls (n, T)`` are the 0/1 calls (default ``p >= 0.5``; the
fit passes the cross-fitted calls, each fold thresholded by the rule of the other folds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mil.stats import auroc, balanced_accuracy, bootstrap_ci

METRICS = ("auroc", "average_precision", "balanced_accuracy")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall step curve, ``sum_k (R_k - R_{k-1}) P_k`` over the
    distinct score cuts (as scikit-learn's); NaN without a positive."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return math.nan
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last row of each run of equal scores
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _one(y: np.ndarray, p: np.ndarray, c: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(y, p), "average_precision": average_precision(y, p),
            "balanced_accuracy": balanced_accuracy(y.astype(int), c.astype(int))}


def _none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _macro(y: np.ndarray, p: np.ndarray, c: np.ndarray, key: str) -> float:
    vals = []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        vals.append(_one(y[known, j], p[known, j], c[known, j])[key])
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def panel_metrics(y: np.ndarray, p: np.ndarray, targets: Sequence[str],
                  calls: np.ndarray | None = None, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """``per_target``: n known, positives, the metrics and their ``ci95``; ``macro``: the mean
    over targets of each metric with its interval (slides resampled)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    c = (p >= 0.5) if calls is None else np.asarray(calls)
    per: dict[str, Any] = {}
    for j, name in enumerate(targets):
        known = ~np.isnan(y[:, j])
        yj, pj, cj = y[known, j], p[known, j], c[known, j]
        vals = _one(yj, pj, cj)
        cis = {k: [_none(v) for v in bootstrap_ci(lambda a, b, d, k=k: _one(a, b, d)[k],
                                                  yj, pj, cj, n=n_boot, seed=seed)]
               for k in METRICS}
        per[name] = {"n_known": int(known.sum()), "n_positive": int(yj.sum()),
                     **{k: _none(v) for k, v in vals.items()}, "ci95": cis}
    rows = np.arange(y.shape[0])
    macro: dict[str, Any] = {k: _none(_macro(y, p, c, k)) for k in METRICS}
    macro["ci95"] = {k: [_none(v) for v in bootstrap_ci(
        lambda i, k=k: _macro(y[i], p[i], c[i], k), rows, n=n_boot, seed=seed)] for k in METRICS}
    return {"n_slides": int(y.shape[0]), "targets": list(targets), "per_target": per,
            "macro": macro}


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def panel_table(rows: dict[str, dict[str, Any]], targets: Sequence[str]) -> str:
    """One line per model: AUROC [95% interval] per target and the macro AUROC."""
    def cell(m: dict[str, Any]) -> str:
        lo, hi = m["ci95"]["auroc"]
        return f"{_fmt(m['auroc'])} [{_fmt(lo)},{_fmt(hi)}]"

    lines = [f"{'AUROC':>22} " + " ".join(f"{t:>20}" for t in [*targets, "macro"])]
    for name, m in rows.items():
        cells = [cell(m["per_target"][t]) for t in targets] + [cell(m["macro"])]
        lines.append(f"{name:>22} " + " ".join(f"{c:>20}" for c in cells))
    return "\n".join(lines)
