"""How well a run's probabilities are calibrated, before and after temperature scaling, on its
out-of-fold predictions (``metrics.json["calibration"]``, ``RUN_DIR/reliability.png``).

- one label per slide: the top-label reliability (confidence = the highest probability,
  outcome = whether that class is the truth), ECE over it and the multi-class Brier score
  ``sum_c (p_c - [y = c])^2``;
- multilabel: per target, the probability of a positive against how often the target is
  positive, ECE over it and the binary Brier score ``(p - y)^2``, on the known labels; macro
  means over the targets.

ECE = ``sum_b |b| / N * |outcome(b) - confidence(b)|`` over ``BINS`` equal-width bins
(bin b holds values in (b/B, (b+1)/B]; 0 goes to the first). ``after`` is the rule fitted on
all the out-of-fold predictions, applied to them (in-sample); ``after_cross_fitted`` gives each
fold the rule fitted on the other folds (the honest figure).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BINS = 10


def binned(conf: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Per non-empty bin: mean confidence, mean outcome, count."""
    c, o = np.asarray(conf, np.float64), np.asarray(outcome, np.float64)
    idx = np.clip(np.ceil(c * bins).astype(np.int64) - 1, 0, bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "outcome": [], "count": []}
    for b in range(bins):
        m = idx == b
        if m.any():
            out["confidence"].append(float(c[m].mean()))
            out["outcome"].append(float(o[m].mean()))
            out["count"].append(int(m.sum()))
    return out


def ece(conf: np.ndarray, outcome: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of ``conf (N,)`` against 0/1 ``outcome (N,)``."""
    b = binned(conf, outcome, bins)
    n = max(1, sum(b["count"]))
    return float(sum(k / n * abs(o - c) for c, o, k in
                     zip(b["confidence"], b["outcome"], b["count"], strict=True)))


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, np.float64)
    return p.max(1), (p.argmax(1) == np.asarray(labels)).astype(np.float64)


def multiclass_calibration(raw: np.ndarray, after: np.ndarray, crossed: np.ndarray,
                           labels: Sequence[int]) -> dict[str, Any]:
    """ECE, Brier and reliability bins of three versions of the out-of-fold probabilities."""
    y = np.asarray(labels, np.int64)
    out: dict[str, Any] = {"bins": BINS, "ece": {}, "brier": {}, "reliability": {}}
    for name, p in (("before", raw), ("after", after), ("after_cross_fitted", crossed)):
        conf, hit = _top_label(p, y)
        out["ece"][name] = round(ece(conf, hit), 6)
        onehot = np.eye(np.asarray(p).shape[1])[y]
        out["brier"][name] = round(float(np.mean(np.sum((np.asarray(p) - onehot) ** 2, 1))), 6)
        out["reliability"][name] = binned(conf, hit)
    return out


def panel_calibration(raw: np.ndarray, after: np.ndarray, crossed: np.ndarray, y: np.ndarray,
                      targets: Sequence[str]) -> dict[str, Any]:
    """Per target and macro: ECE, Brier and reliability bins (known labels only)."""
    y = np.asarray(y, np.float64)
    out: dict[str, Any] = {"bins": BINS, "per_target": {}, "macro": {"ece": {}, "brier": {}}}
    for j, t in enumerate(targets):
        known = ~np.isnan(y[:, j])
        yj = y[known, j]
        d: dict[str, Any] = {"ece": {}, "brier": {}, "reliability": {}}
        for name, p in (("before", raw), ("after", after), ("after_cross_fitted", crossed)):
            pj = np.asarray(p, np.float64)[known, j]
            d["ece"][name] = round(ece(pj, yj), 6)
            d["brier"][name] = round(float(np.mean((pj - yj) ** 2)), 6)
            d["reliability"][name] = binned(pj, yj)
        out["per_target"][t] = d
    for key in ("ece", "brier"):
        for name in ("before", "after", "after_cross_fitted"):
            out["macro"][key][name] = round(float(np.mean(
                [out["per_target"][t][key][name] for t in targets])), 6)
    return out


def reliability_png(path: Path, panels: dict[str, dict[str, Any]], what: str) -> Path:
    """Reliability diagrams (matplotlib, Agg): one panel per entry of ``panels`` (a title ->
    {"reliability": {version: bins}, "ece": {version: value}}), before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, d) in zip(axes[0], panels.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
        for name, colour in (("before", "#d62728"), ("after_cross_fitted", "#1f77b4")):
            b = d["reliability"][name]
            ax.plot(b["confidence"], b["outcome"], marker="o", color=colour,
                    label=f"{name.replace('_', ' ')} (ECE {d['ece'][name]:.3f})")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=title, xlabel=what,
               ylabel="observed frequency")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def describe(cal: dict[str, Any]) -> str:
    """One line: ECE and Brier before and after (in-sample, cross-fitted)."""
    m = cal.get("macro", cal)

    def f(d: dict[str, float]) -> str:
        return f"{d['before']:.3f} -> {d['after']:.3f} (cross-fitted {d['after_cross_fitted']:.3f})"

    scope = "macro over targets, " if "macro" in cal else ""
    return (f"calibration ({scope}out-of-fold, {cal['bins']} bins): ECE {f(m['ece'])}; "
            f"Brier {f(m['brier'])}")
