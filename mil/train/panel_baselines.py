"""The mean-pooling baselines of :mod:`mil.train.baselines`, per target of a multi-label run:
one class-balanced logistic regression per target on the standardised mean features (all cells;
and predicted blasts when the store has ``blast_prob``), fitted on the known labels of a fold's
non-test slides, scored on its test slides. Saved like the MIL's: ``baselines/<name>.csv``
(out-of-fold per-target probabilities) and ``baselines/models.json`` (fitted on every slide).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mil.store import BLAST_PROB, open_store
from mil.train.baselines import FOLDER, NAMES, LinearBaseline, slide_means
from mil.train.panel_metrics import panel_metrics


def _fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """P(positive) (n_test,) of one target from its known training labels."""
    known = ~np.isnan(y_fit)
    model = LinearBaseline.fit(x_fit[known], y_fit[known].astype(int))
    return model.probs(x_test)[:, 1]


def panel_baselines(store_path: str | Path, slide_ids: Sequence[str], y: np.ndarray,
                    targets: list[str], folds: Sequence[Any], run_dir: Path,
                    seed: int = 0) -> dict[str, Any]:
    """Out-of-fold per-target metrics of each baseline on the MIL's folds (what metrics.json
    records), then each fitted on every labelled slide."""
    means = slide_means(open_store(store_path), slide_ids)
    row = {s: i for i, s in enumerate(slide_ids)}
    y = np.asarray(y, dtype=np.float64)
    out: dict[str, Any] = {}
    finals: dict[str, list[dict[str, Any]]] = {}
    for name in NAMES:
        x = means.features(name)
        if x is None:
            out[name] = {"skipped": f"the store has no {BLAST_PROB}"}
            continue
        ids, probs = [], []
        for fold in folds:
            fit_rows = [row[s] for s in [*fold.train, *fold.val]]
            test_rows = [row[s] for s in fold.test]
            probs.append(np.stack([_fit_predict(x[fit_rows], y[fit_rows, j], x[test_rows])
                                   for j in range(len(targets))], axis=1))  # (n_test, T)
            ids += list(fold.test)
        p = np.concatenate(probs)  # (n, T)
        truth = y[[row[s] for s in ids]]
        out[name] = {"pooled": panel_metrics(truth, p, targets, seed=seed)}
        _write(run_dir / FOLDER / f"{name}.csv", ids, p, targets)
        finals[name] = [asdict(LinearBaseline.fit(x[~np.isnan(y[:, j])],
                                                  y[~np.isnan(y[:, j]), j].astype(int)))
                        for j in range(len(targets))]
    (run_dir / FOLDER).mkdir(parents=True, exist_ok=True)
    (run_dir / FOLDER / "models.json").write_text(
        json.dumps({"task": "multilabel", "targets": targets, "models": finals}) + "\n",
        encoding="utf-8")
    return out


def _write(path: Path, ids: list[str], probs: np.ndarray, targets: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", *(f"prob_{t}" for t in targets)])
        for i, sid in enumerate(ids):
            w.writerow([sid, *(f"{v:.6f}" for v in probs[i])])


def panel_external(run_dir: Path, store: Any, slide_ids: Sequence[str], y: np.ndarray,
                   targets: list[str], cohort: bool) -> dict[str, Any]:
    """Per-target metrics of the run's final baselines on labelled slides of a cohort ({}
    when the run kept none)."""
    path = Path(run_dir) / FOLDER / "models.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text(encoding="utf-8"))
    means = slide_means(store, slide_ids)
    out: dict[str, Any] = {}
    for name, models in doc.get("models", {}).items():
        x = means.features(name)
        if x is None:
            out[name] = {"skipped": f"the store has no {BLAST_PROB}"}
            continue
        p = np.stack([LinearBaseline(**m).probs(x, cohort=cohort)[:, 1] for m in models], axis=1)
        out[name] = panel_metrics(y, p, targets)
    return out
