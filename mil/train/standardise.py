"""Feature standardisation inside the MIL model (``mil.fit --standardise cohort|train|none``).

- ``none``   features enter the model as stored (the first version's behaviour).
- ``train``  per-feature mean/std of the training cells (a fold's training slides; for the final
             models every labelled slide), streamed bag by bag in float64, kept as buffers of the
             model (so in the checkpoint) and applied in its ``forward``.
- ``cohort`` (default) trained as ``train``; ``mil.predict`` and ``mil.heatmap`` replace the
             stored statistics by those of the cohort being predicted (every cell of the store
             that the run's instance weights keep), which undoes a stain or scanner shift that
             moves and scales the features of a whole cohort. A store of fewer than
             :data:`mil.blast.cohort.MIN_COHORT_SLIDES` slides keeps the training statistics
             (a few slides' own signal would move them), and the output says which was used.
             Out-of-fold predictions of the training cohort keep the fold's own statistics.

The statistics are taken over the cells the model sees (after the ``filter`` instance weights),
not over cells it never reads. A checkpoint made without standardisation has no such buffers and
loads and predicts exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mil.stats import RunningMoments

MIN_STD = 1e-6  # a feature with a smaller sd (constant) is left unscaled


class Standardise(StrEnum):
    NONE = "none"
    TRAIN = "train"
    COHORT = "cohort"


class FeatureStandardiser(nn.Module):
    """``(x - mean) / std`` per feature, with the statistics as buffers."""

    mean: Tensor  # (D,)
    std: Tensor  # (D,)

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_stats(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor) -> None:
        """Copy in ``mean (D,)`` and ``std (D,)``; features with std < MIN_STD get std 1."""
        m = torch.as_tensor(np.asarray(mean), dtype=torch.float32)  # (D,)
        s = torch.as_tensor(np.asarray(std), dtype=torch.float32)  # (D,)
        self.mean.copy_(m)
        self.std.copy_(torch.where(s >= MIN_STD, s, torch.ones_like(s)))

    def forward(self, x: Tensor) -> Tensor:  # feats (..., D) -> (..., D)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def moments(bags: Iterable[np.ndarray]) -> RunningMoments:
    """Float64 mean/std (D,) over the rows of every bag ``(n, D)``, one bag in memory."""
    acc = RunningMoments()
    for feats in bags:
        acc.update(feats)
    if acc.n == 0:
        raise ValueError("standardisation: no cells to take statistics from")
    return acc


def source_moments(source: Any, slide_ids: Sequence[str]) -> RunningMoments:
    """Moments of the kept cells of ``slide_ids`` in a :class:`mil.train.data.BagSource`."""
    return moments(source.get(sid)[0] for sid in slide_ids)


def standardised(systems: Sequence[Any]) -> str:
    """The one standardisation mode of an ensemble of MIL systems (old checkpoints: none)."""
    modes = {str(s.hparams.get("standardise", "none")) for s in systems}
    if len(modes) != 1:
        raise ValueError(f"models with different standardisation in one ensemble: {sorted(modes)}")
    return modes.pop()


def use_cohort_stats(systems: Sequence[Any], mean: np.ndarray, std: np.ndarray) -> None:
    """Replace the stored training statistics of every system by a cohort's."""
    for s in systems:
        s.model.norm.set_stats(mean, std)
