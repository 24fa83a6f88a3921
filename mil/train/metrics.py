"""Slide-level metrics for ``metrics.json``: per fold, mean +- sd over folds, and 95% bootstrap
intervals over slides on the pooled out-of-fold predictions.

The scalar metrics and the bootstrap come from :mod:`mil.stats`; this module adds macro F1,
one-vs-rest AUROC per class, the confusion matrix and the fold summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mil.stats import accuracy, auroc, balanced_accuracy, bootstrap_ci

SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")


def macro_f1(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes that occur in ``labels`` or ``preds``."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((preds == c) & (labels == c))
        fp, fn = np.sum((preds == c) & (labels != c)), np.sum((preds != c) & (labels == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan


def class_aurocs(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUROC per class (NaN for a class absent from, or alone in, ``labels``)."""
    return [auroc(labels == c, probs[:, c]) for c in range(probs.shape[1])]


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    vals = [v for v in class_aurocs(labels, probs) if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> list[list[int]]:
    """``m[i][j]`` = slides of true class i predicted as j."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (labels, preds), 1)
    return m.tolist()


def _nan_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def slide_metrics(labels: Sequence[int], probs: np.ndarray, classes: Sequence[str],
                  preds: Sequence[int] | None = None) -> dict[str, Any]:
    """All metrics of one set of slides: ``labels (n,)``, ``probs (n, C)``; the calls are
    ``preds (n,)`` when given (a decision rule's), else the most probable class."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)  # (n, C)
    pred = p.argmax(1) if preds is None else np.asarray(preds, dtype=np.int64)  # (n,)
    n_classes = len(classes)
    per_class = class_aurocs(y, p)
    return {
        "n_slides": int(y.size),
        "accuracy": _nan_none(accuracy(y, pred)),
        "balanced_accuracy": _nan_none(balanced_accuracy(y, pred)),
        "macro_f1": _nan_none(macro_f1(y, pred, n_classes)),
        "macro_auroc": _nan_none(macro_auroc(y, p)),
        "auroc_per_class": {c: _nan_none(v) for c, v in zip(classes, per_class, strict=True)},
        "confusion": confusion(y, pred, n_classes),
        "calls": np.bincount(pred, minlength=n_classes).tolist(),
    }


def bootstrap_intervals(labels: Sequence[int], probs: np.ndarray, n_classes: int,
                        n: int = 1000, seed: int = 0) -> dict[str, list[float | None]]:
    """95% percentile intervals of the scalar metrics, resampling slides."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    idx = np.arange(y.size)
    fns = {
        "accuracy": lambda i: accuracy(y[i], p[i].argmax(1)),
        "balanced_accuracy": lambda i: balanced_accuracy(y[i], p[i].argmax(1)),
        "macro_f1": lambda i: macro_f1(y[i], p[i].argmax(1), n_classes),
        "macro_auroc": lambda i: macro_auroc(y[i], p[i]),
    }
    return {k: [_nan_none(v) for v in bootstrap_ci(fn, idx, n=n, seed=seed)]
            for k, fn in fns.items()}


def summarize_folds(folds: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample sd over folds of each scalar metric (NaN/None folds skipped)."""
    out = {}
    for k in SCALARS:
        vals = np.array([f[k] for f in folds if f.get(k) is not None], dtype=np.float64)
        out[k] = {"mean": _nan_none(vals.mean()) if vals.size else None,
                  "sd": _nan_none(vals.std(ddof=1)) if vals.size > 1 else None}
    return out


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def _with_ci(m: dict[str, Any], k: str) -> str:
    lo, hi = ((m.get("ci95") or {}).get(k) or [None, None])
    return f"{_fmt(m[k])} [{_fmt(lo)},{_fmt(hi)}]"


def summary_table(per_fold: Sequence[dict[str, Any]], summary: dict[str, Any],
                  pooled: dict[str, Any],
                  others: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None) -> str:
    """A short text table: one row per fold, mean +- sd, pooled with its 95% interval; then
    mean +- sd and pooled rows of each of ``others`` (name -> (summary, pooled): baselines)."""
    def rows(name: str, sm: dict[str, Any], po: dict[str, Any]) -> list[str]:
        return [f"{name + ' mean+-sd':>20} " + " ".join(
                    f"{_fmt(sm[k]['mean']) + ' +- ' + _fmt(sm[k]['sd']):>18}" for k in SCALARS),
                f"{name + ' pooled':>20} " + " ".join(f"{_with_ci(po, k):>18}" for k in SCALARS)]

    lines = [f"{'':>20} " + " ".join(f"{k:>18}" for k in SCALARS)]
    for i, f in enumerate(per_fold):
        lines.append(f"{'fold ' + str(i):>20} " + " ".join(f"{_fmt(f[k]):>18}" for k in SCALARS))
    lines += rows("MIL", summary, pooled)
    for name, (sm, po) in (others or {}).items():
        lines += rows(name, sm, po)
    return "\n".join(lines)


def comparison_table(rows: dict[str, dict[str, Any]], classes: Sequence[str]) -> str:
    """One row per model on one labelled cohort: accuracy, balanced accuracy, macro AUROC and
    the calls per class (true counts in the header)."""
    keys = ("accuracy", "balanced_accuracy", "macro_auroc")
    first = next(iter(rows.values()))
    truth = [sum(r) for r in first["confusion"]]
    head = f"calls ({', '.join(f'{c} {n}' for c, n in zip(classes, truth, strict=True))} true)"
    lines = [f"{'':>26} " + " ".join(f"{k:>18}" for k in keys) + f"  {head}"]
    for name, m in rows.items():
        calls = ", ".join(f"{c} {n}" for c, n in zip(classes, m["calls"], strict=True))
        lines.append(f"{name:>26} " + " ".join(f"{_fmt(m[k]):>18}" for k in keys) + f"  {calls}")
    return "\n".join(lines)
