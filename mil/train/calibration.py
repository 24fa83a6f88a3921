"""The decision rule of a run, fitted on its out-of-fold predictions (``RUN_DIR/calibration.json``).

    rule = fit_rule(oof_probs, oof_labels, classes, calibration="temperature", threshold="balanced")
    probs = rule.calibrate(ensemble_probs)      # (n, C) softmax(log p / T)
    calls = rule.calls(probs)                   # (n,) class index

- **Temperature** (``mil.fit --calibration temperature``; ``none``: T = 1): the single T > 0
  minimising the out-of-fold NLL of ``softmax(log p / T)``, p a fold model's softmax (a log
  softmax is the logits up to a constant, which softmax ignores). Applied to the ensemble's mean
  softmax. It never moves the most probable class.
- **Threshold** (binary tasks, ``--threshold balanced``; ``argmax``: the most probable class): call
  the second class when its calibrated probability is >= t, t maximising the balanced accuracy of
  the out-of-fold predictions (the midpoint between neighbouring scores; among ties the one
  nearest 0.5). Models trained with class-balanced batches already aim at a balanced call; the
  threshold corrects what the out-of-fold predictions show they miss.
- **Prevalence model**: bias-corrected temperature scaling (BCTS, Alexandari et al. 2020),
  ``softmax(log p / T' + b)`` fitted on the out-of-fold predictions, with the training cohort's
  class shares ``train_prior``. It turns the outputs into posteriors for a known prior, which
  the EM prevalence adaptation (:mod:`mil.train.prevalence`) needs; temperature alone cannot,
  since class-balanced training leaves the outputs at a balanced prior.

:func:`cross_fitted` gives honest out-of-fold figures of the rule: each fold's predictions
calibrated and thresholded by a rule fitted on the other folds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from mil.errors import CliError
from mil.train.metrics import slide_metrics

R = TypeVar("R")

FILE = "calibration.json"
EPS = 1e-12


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` (n, C) with p clipped away from 0."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)  # (n, C)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    y = np.asarray(labels, dtype=np.int64)
    return float(-log_probs(probs)[np.arange(y.size), y].mean())


def fit_scaling(probs: np.ndarray, labels: np.ndarray, bias: bool = False
                ) -> tuple[float, np.ndarray]:
    """(T, b (C,)) minimising the NLL of ``softmax(log p / T + b)``; b = 0 without ``bias``
    (b_0 is fixed at 0: softmax ignores a common shift). T is clipped to [0.05, 20]."""
    z = torch.as_tensor(log_probs(probs))  # (n, C)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (n,)
    c = z.shape[1]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c - 1, dtype=torch.float64, requires_grad=bias)  # (C - 1,)
    params = [log_t, b] if bias else [log_t]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        shift = torch.cat([torch.zeros(1, dtype=torch.float64), b])  # (C,)
        loss = torch.nn.functional.cross_entropy(z / log_t.exp() + shift, y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(np.clip(log_t.exp().item(), 0.05, 20.0))
    return t, np.concatenate([[0.0], b.detach().numpy()])


def best_threshold(p_pos: np.ndarray, labels: np.ndarray) -> float:
    """The cut on P(class 1) maximising balanced accuracy (ties: the one nearest 0.5); both
    classes must occur in ``labels``."""
    p = np.asarray(p_pos, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    s = np.unique(p)
    cuts = np.concatenate([[s[0] - 1e-9], (s[1:] + s[:-1]) / 2, [s[-1] + 1e-9]])
    pos, neg = np.sort(p[y == 1]), np.sort(p[y == 0])
    tpr = 1.0 - np.searchsorted(pos, cuts, side="left") / pos.size  # share of p >= cut
    tnr = np.searchsorted(neg, cuts, side="left") / neg.size
    scores = (tpr + tnr) / 2  # balanced accuracy of every cut
    best = cuts[np.isclose(scores, scores.max())]
    return float(best[np.argmin(np.abs(best - 0.5))])


@dataclass
class DecisionRule:
    """What ``mil.predict`` applies to the ensemble's mean softmax (see the module docstring)."""

    classes: list[str]
    temperature: float = 1.0
    threshold: float | None = None  # on P(classes[1]); None: the most probable class
    train_prior: list[float] = field(default_factory=list)  # class shares of the OOF slides
    bcts_temperature: float = 1.0
    bcts_bias: list[float] = field(default_factory=list)
    fitted_on: dict[str, Any] = field(default_factory=dict)  # OOF figures, for the record

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Reported probabilities (n, C); unchanged when T = 1."""
        if self.temperature == 1.0:
            return np.asarray(probs, dtype=np.float64)
        return softmax(log_probs(probs) / self.temperature)

    def calls(self, calibrated: np.ndarray) -> np.ndarray:
        """Class index (n,) of calibrated probabilities."""
        p = np.asarray(calibrated, dtype=np.float64)
        if self.threshold is None:
            return p.argmax(axis=1)
        return (p[:, 1] >= self.threshold).astype(np.int64)

    def prior_calibrated(self, probs: np.ndarray) -> np.ndarray:
        """Posteriors for ``train_prior`` (n, C): the BCTS map of the raw mean softmax."""
        bias = np.asarray(self.bcts_bias or [0.0] * len(self.classes))
        return softmax(log_probs(probs) / self.bcts_temperature + bias)

    def describe(self) -> str:
        t = (f"temperature {self.temperature:.3f}" if self.temperature != 1.0
             else "no temperature (T = 1)")
        call = (f"call {self.classes[1]} when p({self.classes[1]}) >= {self.threshold:.3f} "
                "(threshold chosen on out-of-fold predictions for balanced accuracy)"
                if self.threshold is not None else "call the most probable class")
        return f"decision rule: {t}; {call}"

    def save(self, run_dir: Path) -> None:
        (run_dir / FILE).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, run_dir: Path) -> DecisionRule | None:
        """The run's rule, or None for a run made before there was one."""
        path = Path(run_dir) / FILE
        if not path.is_file():
            return None
        return read_record(cls, path, "calibration file")


def read_record(cls: type[R], path: Path, what: str) -> R:
    """A dataclass a run wrote as JSON; a damaged or foreign file is a one-line CliError."""
    try:
        return cls(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as err:
        raise CliError(f"{path}: not a {what} ({err})") from None


def fit_rule(probs: np.ndarray, labels: np.ndarray, classes: list[str],
             calibration: str = "temperature", threshold: str = "balanced") -> DecisionRule:
    """The decision rule from out-of-fold ``probs (n, C)`` (fold models' softmax) and labels."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    t = fit_scaling(p, y)[0] if calibration == "temperature" else 1.0
    bt, bias = fit_scaling(p, y, bias=True)
    rule = DecisionRule(list(classes), t, None,
                        (np.bincount(y, minlength=len(classes)) / y.size).tolist(),
                        bt, bias.tolist())
    if threshold == "balanced" and len(classes) == 2 and np.unique(y).size == 2:
        rule.threshold = best_threshold(rule.calibrate(p)[:, 1], y)
    rule.fitted_on = {"n_slides": int(y.size), "nll_raw": nll(p, y),
                      "nll_calibrated": nll(rule.calibrate(p), y)}
    return rule


def cross_fitted(probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, classes: list[str],
                 calibration: str, threshold: str) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probs (n, C), calls (n,)): fold k's slides by the rule of the other folds."""
    p = np.asarray(probs, dtype=np.float64)
    y, folds = np.asarray(labels), np.asarray(fold_of)
    out, calls = np.zeros_like(p), np.zeros(len(y), dtype=np.int64)
    for k in np.unique(folds):
        test = folds == k
        rule = fit_rule(p[~test], y[~test], classes, calibration, threshold)
        out[test] = rule.calibrate(p[test])
        calls[test] = rule.calls(out[test])
    return out, calls



def decide_on_oof(probs: np.ndarray, labels: Sequence[int], fold_of: Sequence[int],
                  classes: list[str], calibration: str, threshold: str,
                  run_dir: Path) -> dict[str, Any]:
    """Fit the rule on a run's out-of-fold predictions, save it in ``run_dir``; returns what
    metrics.json records of it, with the cross-fitted figures."""
    y = np.asarray(labels, dtype=np.int64)
    rule = fit_rule(probs, y, classes, calibration, threshold)
    rule.save(run_dir)
    cal, calls = cross_fitted(probs, y, np.asarray(fold_of), classes, calibration, threshold)
    return {"temperature": rule.temperature, "threshold": rule.threshold, **rule.fitted_on,
            "cross_fitted": slide_metrics(y, cal, classes, calls),
            "note": "cross_fitted: each fold's slides calibrated and called by the rule fitted "
                    "on the other folds"}
