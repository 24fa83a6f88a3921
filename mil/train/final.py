"""The final models: after cross-validation, the models for new slides, trained on every labelled
slide (``mil.fit --final-seeds N``; 0: none, new slides get the fold ensemble as before).

    RUN_DIR/final/seed_K/model.ckpt      one per seed, trained for the folds' chosen epochs
    RUN_DIR/final/final.json             written last: epochs, the folds' best epochs, seeds, slides

The epoch count is the median over folds of the epoch their checkpoint was picked at (by the
validation loss), rounded half up: the fold models say how long this recipe should train, and
the final models train that long on all the slides, without a validation part. They follow the
folds' recipe step for step, learning-rate schedule included (warmup and cosine over
``--epochs``), and stop where the folds' checkpoints were picked, so their outputs are on the
scale the decision rule was fitted on (the out-of-fold predictions of the fold models); a
schedule annealed to zero over the shorter run gave sharper outputs that the fold-fitted
temperature and threshold then pushed to one class on a shifted cohort. Each fold model learnt
from about two thirds of the labelled slides and was picked on a handful; the final models use
them all. The fold models stay for the out-of-fold figures and explanations.

A finished seed (its ``model.ckpt`` trained for the chosen epochs) is reused on re-run.
:meth:`mil.train.rundir.RunDir.models` is how ``mil.predict`` and ``mil.heatmap`` pick theirs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from mil.errors import CliError
from mil.train.config import FitConfig
from mil.train.data import BagDataModule
from mil.train.rundir import FINAL
from mil.train.trainer import batch_dtype, build_system, build_trainer, copy_threads

log = logging.getLogger("mil")
SEED_OFFSET = 1000  # final model k uses seed + 1000 + k (fold k uses seed + k)


def trained_epochs(ckpt: Path, after_fit: bool = False) -> int:
    """Epochs a Lightning checkpoint had trained when it was saved: a fold's best checkpoint,
    saved during its epoch, records that epoch's 0-based index; one saved after ``fit`` ended
    (``after_fit``, a final model) records the epochs completed."""
    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    if "epoch" not in state:
        raise CliError(f"{ckpt}: records no epoch; cannot choose the final models' epochs")
    return int(state["epoch"]) + (0 if after_fit else 1)


def chosen_epochs(best: Sequence[int]) -> int:
    """Median of the folds' best epoch counts, rounded half up, at least 1."""
    return max(1, math.floor(float(np.median(best)) + 0.5))


class StopAfter(pl.Callback):
    """Stop training at the end of epoch ``epochs`` (the schedule still spans ``max_epochs``)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def train_final(cfg: FitConfig, ctx: dict[str, Any], slides: Sequence[str], epochs: int,
                seed: int, path: Path) -> None:
    """Train one final model on ``slides`` for exactly ``epochs`` epochs of the folds' schedule
    (over ``cfg.epochs``); save it at ``path``."""
    pl.seed_everything(seed, workers=True, verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    dm = BagDataModule(ctx["source"], ctx["label_of"], slides, [], [],
                       batch_size=cfg.batch_size, max_cells=cfg.max_cells or None,
                       workers=cfg.workers, seed=seed, feature_dtype=batch_dtype(cfg),
                       copy_threads=copy_threads(cfg))
    system = build_system(cfg, ctx, slides)
    trainer = build_trainer(cfg, path.parent, cfg.epochs, [StopAfter(epochs)], validate=False)
    trainer.fit(system, datamodule=dm)
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(str(tmp), weights_only=True)  # rank 0 writes
    if trainer.is_global_zero:
        tmp.replace(path)


def run_final(cfg: FitConfig, ctx: dict[str, Any], run_dir: Path, n_folds: int,
              rank_zero: bool = True) -> dict[str, Any] | None:
    """Train (or reuse) the ``cfg.final_seeds`` final models; returns final.json's content."""
    if cfg.final_seeds < 1:
        return None
    folder = run_dir / FINAL
    best = [trained_epochs(run_dir / f"fold_{k}" / "best.ckpt") for k in range(n_folds)]
    epochs = chosen_epochs(best)
    slides = list(ctx["slide_ids"])
    ckpts = []
    for k in range(cfg.final_seeds):
        path = folder / f"seed_{k}" / "model.ckpt"
        if path.is_file() and trained_epochs(path, after_fit=True) == epochs:
            log.info("final model %d: finished earlier, reusing %s", k, path)
        else:
            log.info("final model %d: %d slides, %d epochs (fold best epochs %s)", k,
                     len(slides), epochs, best)
            train_final(cfg, ctx, slides, epochs, cfg.seed + SEED_OFFSET + k, path)
        ckpts.append(str(path.relative_to(run_dir)))
    doc = {"epochs": epochs, "fold_best_epochs": best, "rule": "median of the folds, half up",
           "seeds": [cfg.seed + SEED_OFFSET + k for k in range(cfg.final_seeds)],
           "checkpoints": ckpts, "n_slides": len(slides), "slide_ids": slides}
    if rank_zero:
        (folder / "final.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc
