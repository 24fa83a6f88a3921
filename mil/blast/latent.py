"""The filter's error rate with the raters' own mistakes modelled: a latent-class estimate.

    res = latent_error(strata, answers, shares, n_boot=1000)   # {"error_rate", "ci", ...}

The consensus of two raters who each err on a few percent of cells is itself wrong on some
cells, which puts a floor under the consensus error rate of a nearly perfect filter. Here the
true class of each audited cell is latent (Hui & Walter 1980; Dawid & Skene 1979): in stratum h
(the filter's call) a cell is a blast with probability ``pi_h``; rater r says "blast" with
probability ``se_r`` for a blast and ``1 - sp_r`` for a non-blast, independently of the other
raters given the true class. EM fits ``pi``, ``se`` and ``sp`` to every blast/non-blast answer
(unsure, unusable and missing answers are left out). Two raters and two strata give exactly as
many equations as unknowns; more raters over-determine it. The filter errs on ``1 - pi_blast``
of its blast calls and ``pi_nonblast`` of its non-blast calls; the store's error rate weights
them by the predicted-class shares. Interval: percentile bootstrap over cells within strata.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def fit_latent(strata: np.ndarray, answers: np.ndarray, iters: int = 500,
               tol: float = 1e-9) -> dict[str, np.ndarray]:
    """EM for ``strata (N,)`` in {0, 1} and ``answers (N, R)`` in {0, 1, -1 = none}:
    ``pi (2,)`` P(blast | stratum), ``se (R,)``, ``sp (R,)``, ``post (N,)`` P(blast | answers)."""
    h = np.asarray(strata, dtype=np.int64)  # (N,)
    a = np.asarray(answers, dtype=np.float64)  # (N, R)
    seen = a >= 0  # (N, R)
    yes, no = (a == 1) & seen, (a == 0) & seen
    votes = np.where(seen.any(axis=1), yes.sum(1) / np.maximum(seen.sum(1), 1), 0.5)  # (N,)
    post = np.clip(votes, 0.05, 0.95)
    pi, se, sp = np.full(2, 0.5), np.full(a.shape[1], 0.9), np.full(a.shape[1], 0.9)
    for _ in range(iters):
        pi = np.array([post[h == k].mean() if (h == k).any() else 0.5 for k in (0, 1)])
        se = (post[:, None] * yes).sum(0) / np.maximum((post[:, None] * seen).sum(0), 1e-12)
        sp = ((1 - post)[:, None] * no).sum(0) / np.maximum(((1 - post)[:, None] * seen).sum(0),
                                                             1e-12)
        pi, se, sp = (np.clip(x, 1e-6, 1 - 1e-6) for x in (pi, se, sp))
        log1 = np.log(pi[h]) + (yes * np.log(se) + no * np.log(1 - se)).sum(1)  # (N,)
        log0 = np.log(1 - pi[h]) + (yes * np.log(1 - sp) + no * np.log(sp)).sum(1)  # (N,)
        new = 1.0 / (1.0 + np.exp(log0 - log1))
        done = np.max(np.abs(new - post)) < tol
        post = new
        if done:
            break
    return {"pi": pi, "se": se, "sp": sp, "post": post}


def _store_error(pi: np.ndarray, shares: tuple[float, float]) -> float:
    """Error over the store: blast calls wrong 1 - pi[1], non-blast calls wrong pi[0]."""
    w_blast, w_non = shares
    return float((w_blast * (1 - pi[1]) + w_non * pi[0]) / (w_blast + w_non))


def latent_error(strata: np.ndarray, answers: np.ndarray, shares: tuple[float, float] | None,
                 names: list[str], *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The latent-class error rates (per predicted class, and over the store when ``shares``
    (blast, non-blast) are given) with bootstrap 95% intervals, and each rater's se/sp."""
    h = np.asarray(strata, dtype=np.int64)
    a = np.asarray(answers, dtype=np.int64)
    keep = (a >= 0).any(axis=1)
    h, a = h[keep], a[keep]
    if len(names) < 2 or len(h) == 0 or len(np.unique(h)) < 2:
        return {"error_rate": None, "note": "needs two or more raters and cells in both strata"}
    fit = fit_latent(h, a)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(h == k) for k in (0, 1)]
    reps = []
    for _ in range(n_boot):
        rows = np.concatenate([rng.choice(m, size=len(m)) for m in members])
        pi = fit_latent(h[rows], a[rows], iters=200, tol=1e-6)["pi"]
        reps.append([1 - pi[1], pi[0], _store_error(pi, shares) if shares else math.nan])
    q = np.quantile(np.array(reps), [0.025, 0.975], axis=0) if reps else np.full((2, 3), np.nan)
    out: dict[str, Any] = {
        "blast_error_rate": float(1 - fit["pi"][1]), "blast_ci": q[:, 0].tolist(),
        "nonblast_error_rate": float(fit["pi"][0]), "nonblast_ci": q[:, 1].tolist(),
        "n_cells": int(len(h)),
        "raters": {r: {"sensitivity": float(fit["se"][i]), "specificity": float(fit["sp"][i])}
                   for i, r in enumerate(names)},
        "method": "latent class (Hui-Walter / Dawid-Skene EM), raters independent given the "
                  "true class; ci: bootstrap over cells within strata"}
    if shares:
        out.update({"error_rate": _store_error(fit["pi"], shares), "ci": q[:, 2].tolist()})
    return out
