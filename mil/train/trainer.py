"""One training recipe for the fold models and the final models: the
:class:`mil.train.lightning_module.MILSystem` and the Lightning ``Trainer`` that a
:class:`mil.train.config.FitConfig` describes.

``ctx`` is the run's shared context built by :func:`mil.train.crossval.fit`: ``source`` (the
:class:`mil.train.data.BagSource`), ``classes``, ``label_of``, ``slide_ids`` and ``provenance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from mil.train.config import PRECISION, FitConfig
from mil.train.lightning_module import MILSystem
from mil.train.standardise import Standardise, source_moments


def devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def on_cpu(cfg: FitConfig) -> bool:
    """Whether the run trains on the CPU (``--accelerator cpu``, or ``auto`` without CUDA)."""
    return cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())


def batch_dtype(cfg: FitConfig) -> torch.dtype | None:
    """The dtype batches are collated in: float32 on the CPU (the float16 features are cast in
    the padding copy, one pass, instead of again inside the model), else the store's float16
    (half the host-to-device transfer; the device casts)."""
    return torch.float32 if on_cpu(cfg) else None


def copy_threads(cfg: FitConfig) -> int | None:
    """Torch threads for collating a batch: 1 on the CPU, where the copies run between the
    model's steps on the same cores and a parallel region per bag stalls whenever another
    process holds a core (:func:`mil.train.data.collate_bags`); else as they are."""
    return 1 if on_cpu(cfg) else None


def loggers(out_dir: Path) -> list[Any]:
    """A CSV logger, and TensorBoard's when it is installed."""
    out: list[Any] = [CSVLogger(str(out_dir), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        out.append(TensorBoardLogger(str(out_dir), name="tb", version=""))
    except ImportError:
        pass
    return out


def build_system(cfg: FitConfig, ctx: dict[str, Any], train_slides: Sequence[str]) -> MILSystem:
    """A fresh MILSystem; with ``--standardise train|cohort`` it carries the mean/std of the
    kept cells of ``train_slides``."""
    source = ctx["source"]
    system = MILSystem(
        in_dim=source.feature_dim, classes=ctx["classes"], pooling=cfg.model, hidden=cfg.hidden,
        attn_hidden=cfg.attn_hidden, dropout=cfg.dropout, loss=cfg.loss, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac,
        instance_weights=cfg.instance_weights, prior_strength=cfg.prior_strength,
        provenance=ctx["provenance"], standardise=cfg.standardise,
        **({"task": "multilabel", "pos_weight": positive_weights(ctx["label_of"], train_slides)}
           if cfg.task == "multilabel" else {}))
    if cfg.standardise != Standardise.NONE:
        stats = source_moments(source, train_slides)
        system.model.norm.set_stats(stats.mean, stats.std)
    return system


def positive_weights(label_of: dict[str, Any], slides: Sequence[str]) -> list[float]:
    """Per target, known negatives / known positives over ``slides`` (1 where either is 0)."""
    y = np.stack([label_of[s] for s in slides])  # (n, T), NaN unknown
    pos, neg = (y == 1).sum(0), (y == 0).sum(0)  # (T,)
    return np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0).tolist()


def build_trainer(cfg: FitConfig, out_dir: Path, max_epochs: int, callbacks: list[Any],
                  validate: bool = True) -> pl.Trainer:
    """The Lightning Trainer; ``validate=False`` runs no validation loop (final models)."""
    return pl.Trainer(
        max_epochs=max_epochs, accelerator=cfg.accelerator, devices=devices(cfg.devices),
        num_nodes=cfg.num_nodes, strategy=cfg.strategy, precision=PRECISION[cfg.precision],
        gradient_clip_val=cfg.grad_clip or None, deterministic="warn", callbacks=callbacks,
        logger=loggers(out_dir), default_root_dir=str(out_dir),
        enable_progress_bar=cfg.progress, enable_model_summary=False,
        enable_checkpointing=validate, limit_val_batches=None if validate else 0,
        use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=1)
