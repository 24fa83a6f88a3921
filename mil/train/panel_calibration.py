"""The decision rule of a multi-label run (``RUN_DIR/calibration.json``, ``"task": "multilabel"``).

Per target, fitted on the out-of-fold predictions of the slides whose label is known:

- a **temperature** T_t > 0 minimising the BCE of ``sigmoid(logit(p) / T_t)`` (``--calibration
  none``: T = 1), applied to the ensemble's mean sigmoid; it never moves a slide's rank;
- a **threshold** on the calibrated probability maximising balanced accuracy
  (:func:`mil.train.calibration.best_threshold`; ``--threshold argmax``: 0.5).

:func:`cross_fitted` gives each fold's slides the rule fitted on the other folds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mil.errors import CliError
from mil.train.calibration import FILE, best_threshold, read_record

EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """T in [0.05, 20] minimising the BCE of ``sigmoid(logit(p) / T)`` on known ``y`` (0/1)."""
    z = torch.as_tensor(logit(p))
    t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


@dataclass
class PanelRule:
    """Per-target temperatures and thresholds (see the module docstring)."""

    targets: list[str]
    temperatures: list[float]
    thresholds: list[float]
    task: str = "multilabel"
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, T) of the mean sigmoid ``probs (n, T)``."""
        return sigmoid(logit(probs) / np.asarray(self.temperatures))

    def calls(self, calibrated: np.ndarray) -> np.ndarray:
        """0/1 calls (n, T)."""
        return (np.asarray(calibrated) >= np.asarray(self.thresholds)).astype(np.int64)

    def describe(self) -> str:
        parts = [f"{t} T={tt:.3f} call>={th:.3f}" for t, tt, th in
                 zip(self.targets, self.temperatures, self.thresholds, strict=True)]
        return "decision rule per target (fitted out-of-fold): " + "; ".join(parts)

    def save(self, run_dir: Path) -> None:
        (Path(run_dir) / FILE).write_text(json.dumps(asdict(self), indent=1) + "\n",
                                          encoding="utf-8")


def load_panel_rule(run_dir: Path) -> PanelRule:
    """The rule of a multi-label run (a CliError when it has none or it is not one)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise CliError(f"{run_dir}: no {FILE}; has mil.fit --task multilabel finished?")
    return read_record(PanelRule, path, "multi-label calibration file")


def fit_panel_rule(probs: np.ndarray, y: np.ndarray, targets: list[str],
                   calibration: str = "temperature", threshold: str = "balanced") -> PanelRule:
    """The rule from out-of-fold ``probs (n, T)`` and labels ``y (n, T)`` (NaN unknown)."""
    p, y = np.asarray(probs, np.float64), np.asarray(y, np.float64)
    temps, cuts = [], []
    for j in range(len(targets)):
        known = ~np.isnan(y[:, j])
        pj, yj = p[known, j], y[known, j].astype(np.int64)
        both = np.unique(yj).size == 2
        temps.append(fit_temperature(pj, yj) if calibration == "temperature" and both else 1.0)
        cal = sigmoid(logit(pj) / temps[-1])
        cuts.append(best_threshold(cal, yj) if threshold == "balanced" and both else 0.5)
    return PanelRule(list(targets), temps, cuts, fitted_on={"n_slides": int(y.shape[0])})


def cross_fitted(probs: np.ndarray, y: np.ndarray, fold_of: np.ndarray, targets: list[str],
                 calibration: str, threshold: str) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated probs (n, T), thresholds per slide (n, T)): fold k by the other folds' rule."""
    p, folds = np.asarray(probs, np.float64), np.asarray(fold_of)
    out, cut = np.zeros_like(p), np.zeros_like(p)
    for k in np.unique(folds):
        test = folds == k
        rule = fit_panel_rule(p[~test], np.asarray(y)[~test], targets, calibration, threshold)
        out[test] = rule.calibrate(p[test])
        cut[test] = np.asarray(rule.thresholds)
    return out, cut
