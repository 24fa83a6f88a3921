"""How often are the expert cell labels wrong? Confident learning, with no audit.

    python -m mil.blast noise STORE --labels cell_labels.csv --out noise_cl.json

Confident learning (Northcutt, Jiang & Chuang, JAIR 70, 2021), written here from the paper
(cleanlab is AGPL-3.0; cellmil is Apache-2.0), on the blast filter's out-of-fold calibrated
probabilities of the labelled cells (slide-grouped CV, the same as ``mil.blast fit``):

1. per-class thresholds ``t_j``: the mean predicted probability of class j over the cells
   labelled j (the filter's self-confidence on its own class);
2. the confident joint ``C[i, j]``: cells labelled i whose probability of class j reaches
   ``t_j`` (the largest such j when several do; a cell reaching none is not counted);
3. calibrated joint ``Q``: the rows of C scaled to the number of cells given each label, then
   normalised to sum 1; ``Q[i, j]`` estimates P(given = i, true = j);
4. ``error_rate = 1 - trace(Q)``; ``transition[j, i] = P(given = i | true = j)`` (rows = true
   class, order non-blast, blast);
5. suspects (prune by noise rate): for each i != j, the ``round(n Q[i, j])`` cells labelled i
   with the largest margin ``p_j - p_i``; ``suspects.csv`` lists every labelled cell, those
   flagged first, each group by self-confidence ``p_label`` ascending.

``filter_error_rate`` estimates the filter's own error against the true classes from the
same numbers, assuming the filter's mistakes and the label noise are independent given the
true class: the observed joint of (given label, out-of-fold call) is ``T^T diag(pi) F``, so
``diag(pi) F = (T^T)^-1 M`` and the error is its off-diagonal mass.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mil.blast.folder import BLAST, NONBLAST

if TYPE_CHECKING:
    from mil.blast.config import NoiseConfig

log = logging.getLogger("mil.blast")
CLASSES = (NONBLAST, BLAST)  # class index 0, 1


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C (K, K) counts, rows = given label; thresholds (K,)) of ``probs (N, K)``."""
    y = np.asarray(labels, dtype=np.int64)  # (N,)
    p = np.asarray(probs, dtype=np.float64)  # (N, K)
    k = p.shape[1]
    t = np.array([p[y == j, j].mean() if (y == j).any() else 1.0 for j in range(k)])  # (K,)
    above = p >= t  # (N, K)
    counted = above.any(axis=1)  # (N,)
    true = np.where(above, p, -np.inf).argmax(axis=1)  # (N,)
    c = np.zeros((k, k), dtype=np.int64)
    np.add.at(c, (y[counted], true[counted]), 1)
    return c, t


def calibrated_joint(c: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Q (K, K): rows of ``c`` scaled to ``label_counts``, normalised to sum 1. A given
    class with no confidently counted cell keeps all its cells on the diagonal."""
    c = np.asarray(c, dtype=np.float64)
    n = np.asarray(label_counts, dtype=np.float64)  # (K,)
    rows = c.sum(axis=1, keepdims=True)  # (K, 1)
    cal = np.where(rows > 0, c / np.where(rows > 0, rows, 1.0), np.eye(len(n))) * n[:, None]
    return cal / cal.sum()


def transition(q: np.ndarray) -> np.ndarray:
    """``T[j, i] = P(given = i | true = j)`` from the joint ``Q[i, j]``; rows = true class."""
    col = q.sum(axis=0, keepdims=True)  # (1, K): P(true = j)
    return (q / np.where(col > 0, col, 1.0)).T


def find_issues(labels: np.ndarray, probs: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Boolean (N,): the cells flagged as mislabelled, by prune-by-noise-rate."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    flag = np.zeros(len(y), dtype=bool)
    for i in range(q.shape[0]):
        rows = np.flatnonzero(y == i)
        for j in range(q.shape[1]):
            k = min(round(float(q[i, j]) * len(y)), len(rows))
            if i == j or k == 0:
                continue
            margin = p[rows, j] - p[rows, i]  # (n_i,)
            flag[rows[np.argsort(-margin, kind="stable")[:k]]] = True
    return flag


def filter_error(labels: np.ndarray, calls: np.ndarray, t: np.ndarray) -> float | None:
    """The filter's error against the true classes from (given label, call) pairs and the
    transition ``t`` (rows = true class); None when ``t`` cannot be inverted."""
    k = t.shape[0]
    m = np.zeros((k, k))
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(calls, np.int64)), 1.0)
    m /= max(m.sum(), 1.0)  # P(given = i, call = c)
    if abs(np.linalg.det(t)) < 1e-6:
        return None
    joint = np.clip(np.linalg.solve(t.T, m), 0.0, None)  # P(true = j, call = c)
    joint /= joint.sum()
    return float(1.0 - np.trace(joint))


def estimate(labels: np.ndarray, p_blast: np.ndarray) -> dict[str, Any]:
    """Confident learning on labels (N,) 0/1 and out-of-fold P(blast) (N,)."""
    y = np.asarray(labels, dtype=np.int64)
    probs = np.stack([1.0 - p_blast, p_blast], axis=1)  # (N, 2)
    c, t = confident_joint(y, probs)
    q = calibrated_joint(c, np.bincount(y, minlength=2))
    return {"error_rate": float(1.0 - np.trace(q)), "confident_joint": c, "thresholds": t,
            "joint": q, "transition": transition(q), "issues": find_issues(y, probs, q),
            "filter_error_rate": filter_error(y, (p_blast >= 0.5).astype(np.int64),
                                              transition(q))}


def _bootstrap(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n: int,
               seed: int) -> list[float | None]:
    """95% interval of the error rate, slides resampled (probabilities held fixed)."""
    from mil.stats import bootstrap_ci

    if not n:
        return [None, None]
    lo, hi = bootstrap_ci(lambda a, b: estimate(a, b)["error_rate"], y, p, n=n, seed=seed,
                          groups=groups)
    return [lo, hi]


def write_suspects(path: Path, keys: list[tuple[str, str]], y: np.ndarray, p: np.ndarray,
                   issues: np.ndarray) -> int:
    """``suspects.csv``: every labelled cell, flagged ones first, by self-confidence."""
    self_conf = np.where(y == 1, p, 1.0 - p)  # (N,)
    order = np.lexsort((self_conf, ~issues))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "slide_id", "cell_id", "label", "suggested", "blast_prob",
                    "self_confidence", "flagged"])
        for rank, i in enumerate(order, start=1):
            w.writerow([rank, keys[i][0], keys[i][1], CLASSES[y[i]], CLASSES[1 - y[i]],
                        f"{p[i]:.6f}", f"{self_conf[i]:.6f}", int(issues[i])])
    tmp.replace(path)
    return int(issues.sum())


def run(cfg: NoiseConfig) -> dict[str, Any]:
    """Cross-validate the filter on the labelled cells, estimate the label noise, write
    ``cfg.out`` and ``suspects.csv`` beside it."""
    from mil.blast.train import cross_validate, labelled_cells

    data = labelled_cells(cfg)
    y, groups = data["y"], data["groups"]
    p = cross_validate(data["x"], y, groups, cfg)["calibrated"].astype(np.float64)  # (M,)
    est = estimate(y, p)
    out = Path(cfg.out)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    flagged = write_suspects(out.with_name("suspects.csv"), data["keys"], y, p, est["issues"])
    res = {
        "error_rate": est["error_rate"],
        "ci": _bootstrap(y, p, groups, cfg.bootstrap, cfg.seed),
        "transition": est["transition"].tolist(), "classes": list(CLASSES),
        "transition_note": "rows = true class, columns = given label, order non-blast, blast",
        "joint": est["joint"].tolist(), "confident_joint": est["confident_joint"].tolist(),
        "thresholds": est["thresholds"].tolist(), "n_cells": int(len(y)),
        "n_slides": int(len(np.unique(groups))), "n_flagged": flagged,
        "filter_error_rate": est["filter_error_rate"], "corrections": data["corrections"],
        "suspects": str(out.with_name("suspects.csv")), "store": str(cfg.store),
        "labels": str(cfg.labels), "folds": cfg.folds, "loss": cfg.loss, "model": cfg.model,
        "note": "error_rate: estimated fraction of the expert cell labels that are wrong "
                "(confident learning on out-of-fold probabilities; ci: slide bootstrap with "
                "the probabilities held fixed); filter_error_rate: the filter's estimated "
                "error against the true classes"}
    out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return res


def summary_text(res: dict[str, Any]) -> str:
    lo, hi = res["ci"]
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
    t = res["transition"]
    fe = res["filter_error_rate"]
    return (f"label error rate {res['error_rate']:.3f}{ci} over {res['n_cells']} labelled cells "
            f"({res['n_flagged']} flagged -> {res['suspects']})\n"
            f"  P(labelled blast | true non-blast) {t[0][1]:.3f}, "
            f"P(labelled non-blast | true blast) {t[1][0]:.3f}\n"
            f"  filter error rate (estimated) {'n/a' if fe is None else f'{fe:.3f}'}")
