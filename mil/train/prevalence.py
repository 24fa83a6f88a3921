"""Class prevalence of a new cohort from its unlabelled predictions (``mil.predict --adapt-prevalence``).

EM of Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to new a
priori probabilities": with posteriors ``p_i`` calibrated for the training prior ``pi_s`` and
class-conditional feature distributions that do not change, iterate

    q_i  = normalise(p_i * pi / pi_s)       (E: posteriors under the current prior estimate)
    pi   = mean_i q_i                        (M: the prior that maximises the likelihood)

from ``pi = pi_s`` until pi moves less than ``tol``. The adjusted posteriors q are calibrated for
the new cohort's prevalence, and their most probable class is the call that makes the fewest
errors there. The posteriors come from the run's bias-corrected calibration
(:meth:`mil.train.calibration.DecisionRule.prior_calibrated`), as Alexandari et al. (2020)
found EM needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PRIOR = 1e-6  # the least class share EM may estimate


@dataclass
class PrevalenceFit:
    """EM's result on one cohort."""

    prior: np.ndarray  # (C,) estimated class shares of the cohort
    probs: np.ndarray  # (n, C) posteriors under that prior
    iterations: int
    converged: bool


def em_prevalence(probs: np.ndarray, train_prior: np.ndarray, tol: float = 1e-6,
                  max_iter: int = 1000) -> PrevalenceFit:
    """Saerens EM on ``probs (n, C)`` calibrated for ``train_prior (C,)``. The estimate is kept
    at least ``MIN_PRIOR`` per class and the adjustment done in log space, so a cohort that EM
    drives to one class keeps the ranking of its slides."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))  # (n, C)
    base = np.clip(np.asarray(train_prior, dtype=np.float64), MIN_PRIOR, None)  # (C,)
    base = base / base.sum()
    prior = base.copy()

    def adjusted(pi: np.ndarray) -> np.ndarray:  # (n, C) posteriors under prior pi
        z = logp + np.log(pi / base)
        z = z - z.max(axis=1, keepdims=True)
        q = np.exp(z)
        return q / q.sum(axis=1, keepdims=True)

    for it in range(1, max_iter + 1):
        new = np.clip(adjusted(prior).mean(axis=0), MIN_PRIOR, None)  # (C,)
        new = new / new.sum()
        moved = float(np.abs(new - prior).max())
        prior = new
        if moved < tol:
            return PrevalenceFit(prior, adjusted(prior), it, True)
    return PrevalenceFit(prior, adjusted(prior), max_iter, False)


def describe(fit: PrevalenceFit, classes: list[str], train_prior: list[float],
             before: np.ndarray, after: np.ndarray) -> str:
    """Two lines: estimated prevalence (training shares beside it), calls per class before/after."""
    shares = ", ".join(f"{c} {p:.3f} (training {t:.3f})"
                       for c, p, t in zip(classes, fit.prior, train_prior, strict=True))
    k = len(classes)
    nb, na = np.bincount(before, minlength=k), np.bincount(after, minlength=k)
    calls = ", ".join(f"{c} {b} -> {a}" for c, b, a in zip(classes, nb, na, strict=True))
    note = "" if fit.converged else f" (EM stopped after {fit.iterations} iterations unconverged)"
    return (f"prevalence of this cohort by EM over {len(before)} slides: {shares}{note}\n"
            f"calls per class, fixed rule -> adapted to that prevalence: {calls}")
