"""``python -m mil.predict``: a run's fold ensemble on new slides; predictions and attention CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

from mil.store import SlideId, file_name
from mil.train.ensemble import Ensemble, SlidePrediction
from mil.train.rundir import RunDir


def predict_slides(run_dir: str | Path, store: str | Path | None = None,
                   slides: list[SlideId] | None = None, batch_size: int = 8) -> list[SlidePrediction]:
    """The run's fold ensemble on ``slides`` (default: all) of ``store`` (default: the run's)."""
    run = RunDir(run_dir)
    ensemble = Ensemble(list(run.fold_checkpoints().values()), run.config)
    return ensemble.predict(ensemble.source(store or run.store, slides), batch_size)


def write_predictions(path: Path, preds: list[SlidePrediction]) -> None:
    """``slide_id,prediction,prob_<class>...`` for every prediction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "prediction", *(f"prob_{c}" for c in preds[0].classes)])
        for r in preds:
            w.writerow([r.slide_id, r.classes[int(r.probs.argmax())], *(f"{p:.6f}" for p in r.probs)])


def write_attention(pred: SlidePrediction, folder: Path, name: str | None = None) -> Path:
    """``folder/<name>.csv`` (default: :func:`mil.store.file_name` of the slide): cell_id,
    path, attention per branch, blast_prob. Use :func:`mil.store.file_names` for ``name``
    when writing several slides, so that no two names differ only in case."""
    folder.mkdir(parents=True, exist_ok=True)
    k = pred.attention.shape[1]
    names = ["attention"] if k == 1 else [f"attention_{c}" for c in pred.classes[:k]]
    path = folder / f"{name or file_name(pred.slide_id)}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path", *names, "blast_prob"])
        for i, cid in enumerate(pred.cell_ids):
            bp = "" if pred.blast_prob is None else f"{float(pred.blast_prob[i]):.6f}"
            w.writerow([cid, pred.paths[i], *(f"{a:.6g}" for a in pred.attention[i]), bp])
    return path
