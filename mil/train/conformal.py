"""Split-conformal prediction sets (``mil.predict --conformal ALPHA``), calibrated on a run's
out-of-fold predictions (``RUN_DIR/conformal.json``, written by ``mil.fit``).

Nonconformity score of a slide with a known label: ``s = 1 - p_y``, ``p`` the probabilities the
run's decision rule reports (temperature-scaled), ``y`` its true class (multilabel: per target,
``p_1 = p``, ``p_0 = 1 - p``). With the n calibration scores, ``q = the ceil((n + 1)(1 - ALPHA))-th
smallest`` (every answer when that exceeds n), and a new slide's set is every answer c with
``1 - p_c <= q``, plus the most probable answer when that leaves it empty. If the new slide and
the calibration slides are exchangeable, the set holds the truth with probability at least
1 - ALPHA (marginal over slides; Vovk et al. 2005, Angelopoulos & Bates 2021). Exchangeable means
the same cohort: same site, stain, scanner and case mix; slides of a new site need their own
calibration scores (a labelled sample of that site, scored by the same models).

The scores are the fold models' (out-of-fold) while new slides are called by the final models
(trained on every slide), a small departure from exchangeability that makes the sets, if
anything, conservative: a model trained on more slides is not less sure on average.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError
from mil.train.calibration import read_record

FILE = "conformal.json"


def quantile(scores: np.ndarray, alpha: float) -> float:
    """The conformal threshold of ``scores (n,)`` at ``alpha`` (inf when n is too small)."""
    s = np.sort(np.asarray(scores, np.float64))
    k = math.ceil((s.size + 1) * (1 - alpha))
    return float(s[k - 1]) if 1 <= k <= s.size else math.inf


def class_sets(probs: np.ndarray, q: float, nonempty: bool = True) -> np.ndarray:
    """(n, C) bool membership: ``1 - p_c <= q``, the top class always in unless ``nonempty``
    is False (the textbook sets, which may be empty: their coverage is not lifted by it)."""
    p = np.asarray(probs, np.float64)
    member = (1.0 - p) <= q + 1e-12
    if nonempty:
        member[np.arange(len(p)), p.argmax(1)] = True
    return member


@dataclass
class ConformalScores:
    """What ``mil.fit`` stores: the calibrated out-of-fold probabilities, labels and scores."""

    task: str  # multiclass or multilabel
    names: list[str]  # classes or targets
    probs: list[list[float]]  # (n, C) calibrated out-of-fold probabilities
    labels: list[Any]  # multiclass: class index per slide; multilabel: (n, T) 1/0/None
    scores: list[Any]  # multiclass: (n,); multilabel: per target the known slides' scores

    @classmethod
    def build(cls, task: str, names: Sequence[str], probs: np.ndarray, labels: np.ndarray
              ) -> ConformalScores:
        p = np.asarray(probs, np.float64)
        if task == "multilabel":
            y = np.asarray(labels, np.float64)
            scores = [(1.0 - np.where(y[:, j] == 1, p[:, j], 1 - p[:, j]))[~np.isnan(y[:, j])]
                      .round(8).tolist() for j in range(len(names))]
            lab: list[Any] = [[None if np.isnan(v) else int(v) for v in row] for row in y]
        else:
            y = np.asarray(labels, np.int64)
            scores = (1.0 - p[np.arange(len(y)), y]).round(8).tolist()
            lab = y.tolist()
        return cls(task, list(names), p.round(8).tolist(), lab, scores)

    def save(self, run_dir: Path) -> None:
        (Path(run_dir) / FILE).write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, run_dir: str | Path) -> ConformalScores:
        path = Path(run_dir) / FILE
        if not path.is_file():
            raise CliError(f"{run_dir}: no {FILE} (fitted by an older mil.fit?); re-run mil.fit "
                           "on this folder to store the out-of-fold nonconformity scores")
        return read_record(cls, path, "conformal scores file")

    def thresholds(self, alpha: float) -> list[float]:
        """q per target (multilabel) or a one-element list (multiclass)."""
        if not 0.0 < alpha < 1.0:
            raise CliError(f"--conformal ALPHA must be in (0, 1), got {alpha}")
        if self.task == "multilabel":
            return [quantile(np.asarray(s), alpha) for s in self.scores]
        return [quantile(np.asarray(self.scores), alpha)]


def multiclass_sets(probs: np.ndarray, classes: Sequence[str], q: float) -> list[list[str]]:
    """Each slide's set, most probable first."""
    member = class_sets(probs, q)
    order = np.argsort(-np.asarray(probs), axis=1, kind="stable")
    return [[classes[c] for c in row if member[i, c]] for i, row in enumerate(order)]


def target_calls(probs: np.ndarray, qs: Sequence[float]) -> list[list[str]]:
    """Per slide and target: ``"1"``, ``"0"`` or ``"both"``."""
    p = np.asarray(probs, np.float64)
    out = []
    for row in p:
        calls = []
        for pj, q in zip(row, qs, strict=True):
            member = class_sets(np.array([[1 - pj, pj]]), q)[0]
            calls.append("both" if member.all() else ("1" if member[1] else "0"))
        out.append(calls)
    return out


def split_coverage(sc: ConformalScores, alpha: float, splits: int = 20, seed: int = 0,
                   nonempty: bool = True) -> dict[str, Any]:
    """Empirical coverage and set size over ``splits`` random calibration/test halves of the
    stored slides (multilabel: per target, over its known slides, and their mean);
    ``nonempty``: the sets ``mil.predict`` writes (top answer always in), else the textbook ones."""
    rng = np.random.default_rng(seed)
    p = np.asarray(sc.probs, np.float64)
    if sc.task == "multilabel":
        per = {}
        for j, t in enumerate(sc.names):
            y = np.array([np.nan if r[j] is None else r[j] for r in sc.labels], np.float64)
            known = ~np.isnan(y)
            two = np.stack([1 - p[known, j], p[known, j]], axis=1)
            per[t] = _halves(two, y[known].astype(np.int64), alpha, splits, rng, nonempty)
        return {"per_target": per,
                "coverage_mean": float(np.mean([v["coverage_mean"] for v in per.values()])),
                "set_size_mean": float(np.mean([v["set_size_mean"] for v in per.values()]))}
    return _halves(p, np.asarray(sc.labels, np.int64), alpha, splits, rng, nonempty)


def _halves(p: np.ndarray, y: np.ndarray, alpha: float, splits: int,
            rng: np.random.Generator, nonempty: bool) -> dict[str, Any]:
    cov, size, empty = [], [], []
    n = len(y)
    scores = 1.0 - p[np.arange(n), y]
    for _ in range(splits):
        perm = rng.permutation(n)
        cal, test = perm[: n // 2], perm[n // 2:]
        member = class_sets(p[test], quantile(scores[cal], alpha), nonempty)
        cov.append(float(member[np.arange(len(test)), y[test]].mean()))
        size.append(float(member.sum(1).mean()))
        empty.append(float((member.sum(1) == 0).mean()))
    return {"coverage_mean": float(np.mean(cov)), "coverage_sd": float(np.std(cov, ddof=1)),
            "set_size_mean": float(np.mean(size)), "n_slides": int(n), "n_calibration": n // 2,
            "empty_share": float(np.mean(empty))}
