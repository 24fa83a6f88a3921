"""Two cheap baselines in every fit, so a user sees at once whether attention earns its keep.

- ``lr_all``   the mean feature vector of all cells of a slide, standardised, into a
               class-balanced L2 logistic regression (scikit-learn, C = 1);
- ``lr_blast`` the same over the predicted blasts (stored ``blast_prob >= 0.5``); a slide with no
               predicted blast uses all its cells (counted and named in metrics.json).

``mil.fit`` cross-validates them on exactly the MIL's folds (fit on a fold's training and
validation slides, the MIL's non-test slides; scored on its test slides), then fits them on
every labelled slide and keeps them as plain numbers in ``RUN_DIR/baselines/models.json`` (no
pickles) for ``mil.predict --test-labels``. The standardisation is the training slides' mean/sd;
in a run fitted with ``--standardise cohort`` an external cohort is re-standardised with its own.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.store import BLAST_PROB, open_store
from mil.train.metrics import bootstrap_intervals, slide_metrics, summarize_folds

NAMES = {"lr_all": "LR all cells", "lr_blast": "LR blasts"}
BLAST_CUT = 0.5
FOLDER = "baselines"


@dataclass
class SlideMeans:
    """Mean-pooled features (n, D) of slides, over all cells and over predicted blasts."""

    slide_ids: list[str]
    all: np.ndarray  # (n, D)
    blast: np.ndarray | None  # (n, D); None when the store has no blast_prob
    fallback: list[str]  # slides without a predicted blast (all their cells used)

    def features(self, name: str) -> np.ndarray | None:
        return self.all if name == "lr_all" else self.blast


def slide_means(store: Any, slide_ids: Sequence[str]) -> SlideMeans:
    """Read each slide once from an open bag store (float64 means)."""
    all_, blast, fallback, has_prob = [], [], [], True
    for sid in slide_ids:
        x = np.asarray(store.features(sid), dtype=np.float64)  # (N, D)
        all_.append(x.mean(axis=0))
        prob = store.annotation(sid, BLAST_PROB)
        has_prob = has_prob and prob is not None
        if not has_prob:
            continue
        keep = np.asarray(prob) >= BLAST_CUT  # (N,)
        if not keep.any():
            fallback.append(sid)
            keep[:] = True
        blast.append(x[keep].mean(axis=0))
    return SlideMeans(list(slide_ids), np.stack(all_),
                      np.stack(blast) if has_prob else None, fallback if has_prob else [])


def _scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(sd > 1e-6, sd, 1.0)


@dataclass
class LinearBaseline:
    """Standardise -> logistic regression, as plain arrays."""

    mean: list[float]
    scale: list[float]
    coef: list[list[float]]  # (1, D) binary, (C, D) multiclass
    intercept: list[float]

    @classmethod
    def fit(cls, x: np.ndarray, y: Sequence[int]) -> LinearBaseline:
        from sklearn.linear_model import LogisticRegression

        mean, scale = _scale(x)
        lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000)
        lr.fit((x - mean) / scale, np.asarray(y))
        return cls(mean.tolist(), scale.tolist(), lr.coef_.tolist(), lr.intercept_.tolist())

    def probs(self, x: np.ndarray, cohort: bool = False) -> np.ndarray:
        """Class probabilities (n, C); ``cohort``: standardise with ``x``'s own mean/sd."""
        mean, scale = _scale(x) if cohort else (np.asarray(self.mean), np.asarray(self.scale))
        z = ((x - mean) / scale) @ np.asarray(self.coef).T + np.asarray(self.intercept)  # (n, C')
        if z.shape[1] == 1:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def cross_validate(means: SlideMeans, label_of: dict[str, int], folds: Sequence[Any],
                   classes: list[str], out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Both baselines on the MIL's folds: metrics (per fold, mean +- sd, pooled) and
    ``out_dir/<name>.csv`` (slide_id, fold, truth, prediction, probabilities)."""
    row = {s: i for i, s in enumerate(means.slide_ids)}
    out: dict[str, Any] = {}
    for name in NAMES:
        x = means.features(name)
        if x is None:
            out[name] = {"skipped": f"the store has no {BLAST_PROB}"}
            continue
        ids, fold_of, truth, probs, per_fold = [], [], [], [], []
        for k, fold in enumerate(folds):
            fit_ids = list(fold.train) + list(fold.val)
            model = LinearBaseline.fit(x[[row[s] for s in fit_ids]], [label_of[s] for s in fit_ids])
            p = model.probs(x[[row[s] for s in fold.test]])  # (n_test, C)
            y = [label_of[s] for s in fold.test]
            per_fold.append(slide_metrics(y, p, classes))
            ids += list(fold.test)
            fold_of += [k] * len(fold.test)
            truth += y
            probs.append(p)
        pooled_p = np.concatenate(probs)
        pooled = slide_metrics(truth, pooled_p, classes)
        pooled["ci95"] = bootstrap_intervals(truth, pooled_p, len(classes), seed=seed)
        out[name] = {"folds": per_fold, "mean_sd": summarize_folds(per_fold), "pooled": pooled}
        if name == "lr_blast":
            out[name]["fallback_slides"] = sorted(set(means.fallback) & set(ids))
        _write(out_dir / f"{name}.csv", ids, fold_of, truth, pooled_p, classes)
    return out


def run_baselines(store_path: str | Path, slide_ids: Sequence[str], label_of: dict[str, int],
                  folds: Sequence[Any], classes: list[str], run_dir: Path,
                  seed: int = 0) -> dict[str, Any]:
    """Both baselines on the MIL's folds, then on every labelled slide (kept for new cohorts);
    returns what metrics.json records."""
    means = slide_means(open_store(store_path), slide_ids)
    out = cross_validate(means, label_of, folds, classes, run_dir / FOLDER, seed=seed)
    fit_final(means, [label_of[s] for s in slide_ids], run_dir / FOLDER)
    return out


def _write(path: Path, ids: list[str], fold_of: list[int], truth: list[int], probs: np.ndarray,
           classes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "fold", "truth", "prediction", *(f"prob_{c}" for c in classes)])
        for i, sid in enumerate(ids):
            w.writerow([sid, fold_of[i], classes[truth[i]], classes[int(probs[i].argmax())],
                        *(f"{p:.6f}" for p in probs[i])])


def fit_final(means: SlideMeans, labels: Sequence[int], out_dir: Path) -> dict[str, LinearBaseline]:
    """Both baselines on every labelled slide, saved to ``out_dir/models.json``."""
    models = {n: LinearBaseline.fit(x, labels) for n in NAMES
              if (x := means.features(n)) is not None}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "models.json").write_text(
        json.dumps({n: asdict(m) for n, m in models.items()}) + "\n", encoding="utf-8")
    return models


def external(run_dir: Path, store: Any, slide_ids: Sequence[str], labels: Sequence[int],
             classes: list[str], cohort: bool) -> dict[str, Any]:
    """Metrics of the run's final baselines on labelled slides of another cohort ({} if the
    run kept none)."""
    path = run_dir / FOLDER / "models.json"
    if not path.is_file():
        return {}
    models = {n: LinearBaseline(**m) for n, m in json.loads(path.read_text("utf-8")).items()}
    means = slide_means(store, slide_ids)
    out: dict[str, Any] = {}
    for name, model in models.items():
        x = means.features(name)
        if x is None:
            out[name] = {"skipped": f"the store has no {BLAST_PROB}"}
            continue
        out[name] = slide_metrics(labels, model.probs(x, cohort=cohort), classes)
        if name == "lr_blast":
            out[name]["fallback_slides"] = means.fallback
    return out
