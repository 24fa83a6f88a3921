"""The LightningModule: a thin wrapper that owns loss, metrics, optimiser and schedule around
the plain-torch :class:`mil.train.model.MILClassifier`.

Batches come from :func:`mil.train.data.collate_bags`: ``feats (B, N, D)``, ``mask (B, N)``,
``prob (B, N) | None`` (tempered blast_prob), ``label (B,)``, ``index (B,)``.
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
)

from mil.losses import MaskedBinaryLoss, build_loss
from mil.train.model import MILClassifier, MILOutput, blast_log_prior


def make_metrics(n_classes: int) -> MetricCollection:
    """accuracy, balanced accuracy (= macro recall), macro F1, macro AUROC."""
    return MetricCollection({
        "acc": MulticlassAccuracy(n_classes, average="micro"),
        "bal_acc": MulticlassRecall(n_classes, average="macro"),
        "f1": MulticlassF1Score(n_classes, average="macro"),
        "auroc": MulticlassAUROC(n_classes, average="macro"),
    })


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class MILSystem(pl.LightningModule):
    """Gated-attention MIL classifier + loss + metrics; a checkpoint rebuilds itself."""

    def __init__(
        self,
        in_dim: int,
        classes: list[str],
        pooling: str = "gated",
        hidden: int = 128,
        attn_hidden: int = 128,
        dropout: float = 0.25,
        loss: str = "ce",
        loss_options: dict[str, float] | None = None,
        lr: float = 5e-4,
        weight_decay: float = 1e-2,
        warmup_frac: float = 0.05,
        instance_weights: str = "none",
        prior_strength: float = 1.0,
        provenance: dict[str, Any] | None = None,
        standardise: str = "none",
        task: str = "multiclass",
        pos_weight: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classes = list(classes)
        n_classes = len(self.classes)
        self.model = MILClassifier(in_dim, n_classes, hidden, attn_hidden, dropout, pooling,
                                   standardise=standardise != "none")
        # multilabel (mil.fit --task multilabel): "classes" are the targets, one sigmoid each,
        # the binary counterpart of the loss over the known labels; no torchmetrics (a target
        # may have no positive in a batch), model selection reads the validation loss alone
        self.multilabel = task == "multilabel"
        if self.multilabel:
            self.loss_fn = MaskedBinaryLoss(loss, None if pos_weight is None
                                            else torch.tensor(pos_weight), **(loss_options or {}))
        else:
            self.loss_fn = build_loss(loss, n_classes, **(loss_options or {}))
        metrics = make_metrics(n_classes) if not self.multilabel else MetricCollection({})
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.val_loss = MeanMetric()

    def log_prior(self, prob: Tensor | None) -> Tensor | None:
        """The attention prior from tempered blast probabilities ``prob (..., N)`` (prior mode)."""
        if self.hparams["instance_weights"] != "prior" or prob is None:
            return None
        return blast_log_prior(prob, self.hparams["prior_strength"])  # (..., N)

    def forward(self, batch: dict[str, Tensor | None]) -> MILOutput:
        log_prior = self.log_prior(batch.get("prob"))  # (B, N) or None
        return self.model(batch["feats"], batch["mask"], log_prior)  # logits (B, C), attn (B, N, K)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch)
        loss = self.loss_fn(out.logits, batch["label"])
        bsz = len(batch["label"])
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=bsz)
        if not self.multilabel:
            self.train_metrics.update(out.logits.float().softmax(-1), batch["label"])
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=bsz)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self(batch)
        bsz = len(batch["label"])
        # a torchmetrics mean weighted by bag count: exact over all ranks under DDP
        self.val_loss.update(self.loss_fn(out.logits, batch["label"]), weight=bsz)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, batch_size=bsz)
        if not self.multilabel:
            self.val_metrics.update(out.logits.float().softmax(-1), batch["label"])
            self.log_dict(self.val_metrics, on_step=False, on_epoch=True, batch_size=bsz)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0,
                     dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per bag, unpadded: ``index``, ``probs (C,)`` (multilabel: one sigmoid per target)
        and ``attn (n, K)`` (float32, CPU)."""
        out = self(batch)
        logits = out.logits.float()  # (B, C)
        probs = (logits.sigmoid() if self.multilabel else logits.softmax(-1)).cpu()  # (B, C)
        attn = out.attn.float().cpu()  # (B, N, K)
        lengths = batch["mask"].sum(1).tolist()  # (B,)
        return [{"index": int(batch["index"][j]), "probs": probs[j],
                 "attn": attn[j, : lengths[j]]} for j in range(len(lengths))]

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"],
                                weight_decay=self.hparams["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, round(self.hparams["warmup_frac"] * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
