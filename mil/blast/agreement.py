"""Agreement between expert raters: Cohen's and Fleiss' kappa, bootstrap intervals, consensus.

    k = cohen_kappa(a, b)                         # two raters, nominal labels (N,) each
    k = fleiss_kappa(counts)                      # counts (N, K): raters per item and category
    res = agreement(ratings, n_boot=1000)         # ratings (N, R) category codes, -1 = missing
    label = consensus(["blast", "blast", "unsure"])   # "blast"; a tie for the top is "tie"

Kappa is computed over the items every rater answered (complete cases), with each answer a
nominal category (blast, non-blast, unsure, unusable). Two raters: Cohen (1960),
``(p_o - p_e) / (1 - p_e)`` with ``p_e`` from each rater's own marginals. More raters: Fleiss
(1971), ``(P_bar - P_e) / (1 - P_e)`` with ``P_i = (sum_j n_ij^2 - m) / (m (m - 1))`` and
``P_e = sum_j p_j^2`` from the pooled marginals. Kappa is NaN when chance agreement is 1 (every
answer the same category). Intervals: percentile bootstrap over items (:func:`mil.stats.bootstrap_ci`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from mil.stats import bootstrap_ci

TIE = "tie"


def cohen_kappa(a: Sequence[Any] | np.ndarray, b: Sequence[Any] | np.ndarray) -> float:
    """Cohen's kappa of two raters' labels (N,) each; NaN when undefined."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        return math.nan
    cats = np.unique(np.concatenate([a, b]))
    p_o = float(np.mean(a == b))
    p_e = float(sum(np.mean(a == c) * np.mean(b == c) for c in cats))
    return math.nan if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of ``counts (N, K)``: ``counts[i, j]`` raters put item i in category j;
    every item has the same number m >= 2 of raters. NaN when undefined."""
    n = np.asarray(counts, dtype=np.float64)  # (N, K)
    if n.ndim != 2 or n.shape[0] == 0:
        return math.nan
    m = n.sum(axis=1)  # (N,)
    if not np.all(m == m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa: every item needs the same number (>= 2) of raters")
    m0 = float(m[0])
    p_i = ((n * n).sum(axis=1) - m0) / (m0 * (m0 - 1.0))  # (N,)
    p_j = n.sum(axis=0) / n.sum()  # (K,)
    p_e = float((p_j * p_j).sum())
    return math.nan if p_e >= 1.0 else (float(p_i.mean()) - p_e) / (1.0 - p_e)


def category_counts(ratings: np.ndarray, k: int) -> np.ndarray:
    """``ratings (N, R)`` category codes in [0, k) -> counts (N, k)."""
    r = np.asarray(ratings, dtype=np.int64)  # (N, R)
    return np.stack([(r == j).sum(axis=1) for j in range(k)], axis=1)  # (N, k)


def kappa(ratings: np.ndarray, k: int) -> float:
    """Cohen's kappa for two columns of ``ratings (N, R)``, Fleiss' for more."""
    r = np.asarray(ratings)
    if r.shape[1] == 2:
        return cohen_kappa(r[:, 0], r[:, 1])
    return fleiss_kappa(category_counts(r, k))


def agreement(ratings: np.ndarray, k: int, names: list[str], *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Kappa with its bootstrap 95% interval over the items all raters answered.

    ``ratings (N, R)`` holds category codes in [0, k), -1 where a rater gave no answer."""
    r = np.asarray(ratings, dtype=np.int64)  # (N, R)
    full = r[(r >= 0).all(axis=1)] if r.size else r.reshape(0, len(names))  # (n, R)
    out: dict[str, Any] = {"method": "cohen" if len(names) == 2 else "fleiss",
                           "raters": list(names), "n_cells": int(len(full))}
    if len(names) < 2 or len(full) == 0:
        return {**out, "kappa": None, "ci95": None, "percent_agreement": None,
                "note": "kappa needs two or more raters who answered the same cells"}
    value = kappa(full, k)
    ci = bootstrap_ci(lambda x: kappa(x, k), full, n=n_boot, seed=seed) if n_boot else \
        (math.nan, math.nan)
    same = float(np.mean((full == full[:, :1]).all(axis=1)))
    return {**out, "kappa": _num(value), "ci95": [_num(ci[0]), _num(ci[1])],
            "percent_agreement": same}


def pairwise(ratings: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Cohen's kappa of every pair of raters over the items both answered."""
    r = np.asarray(ratings, dtype=np.int64)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            both = (r[:, i] >= 0) & (r[:, j] >= 0)
            out.append({"raters": [names[i], names[j]], "n_cells": int(both.sum()),
                        "kappa": _num(cohen_kappa(r[both, i], r[both, j]))})
    return out


def consensus(answers: Sequence[str]) -> str | None:
    """The majority answer; ``"tie"`` when two answers share the top count; None if empty."""
    if not answers:
        return None
    top = Counter(answers).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return TIE
    return top[0][0]


def _num(x: float) -> float | None:
    """A float for JSON: NaN becomes None."""
    return None if x is None or math.isnan(x) else float(x)
