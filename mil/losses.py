"""Noise-robust slide-label losses: ``ce``, ``gce``, ``sce``, ``smooth``.

Every loss takes ``logits (B, C)``, integer ``targets (B,)`` and optional per-sample
``weights (B,)``; it returns the weighted mean ``sum(w * l) / sum(w)`` (plain mean without
weights). Class weighting is per-sample weighting with ``weights = class_weight[targets]``.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _reduce(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    """Weighted mean of ``per_sample (B,)``."""
    if weights is None:
        return per_sample.mean()
    w = weights.to(per_sample.dtype)  # (B,)
    return (w * per_sample).sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)


class _SlideLoss(nn.Module):
    """Base: checks shapes, computes per-sample losses, reduces with optional weights."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:  # (B, C), (B,) -> (B,)
        raise NotImplementedError

    def forward(self, logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.n_classes:
            raise ValueError(f"logits must be (B, {self.n_classes}), got {tuple(logits.shape)}")
        return _reduce(self.per_sample(logits.float(), targets.long()), weights)


class CrossEntropy(_SlideLoss):
    """Plain cross-entropy ``-log p_y``."""

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none")  # (B,)


class GeneralizedCE(_SlideLoss):
    """Generalized cross-entropy (Zhang & Sabuncu 2018): ``(1 - p_y^q) / q``.

    q -> 0 gives CE, q = 1 gives MAE (``1 - p_y``)."""

    def __init__(self, n_classes: int, q: float = 0.7):
        super().__init__(n_classes)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"gce q must be in (0, 1], got {q}")
        self.q = q

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_py = torch.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]  # (B,)
        return -torch.expm1(self.q * log_py) / self.q  # (B,) == (1 - p_y^q) / q, stable


class SymmetricCE(_SlideLoss):
    """Symmetric cross-entropy (Wang et al. 2019): ``alpha * CE + beta * RCE`` with reverse CE
    ``-sum_k p_k log y_k`` where ``log 0 := A``, i.e. ``RCE = -A * (1 - p_y)``."""

    def __init__(self, n_classes: int, alpha: float = 0.1, beta: float = 1.0, A: float = -4.0):
        super().__init__(n_classes)
        self.alpha, self.beta, self.A = alpha, beta, A

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, targets, reduction="none")  # (B,)
        p_y = torch.softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]  # (B,)
        rce = -self.A * (1.0 - p_y)  # (B,)
        return self.alpha * ce + self.beta * rce


class LabelSmoothingCE(_SlideLoss):
    """Cross-entropy against ``(1 - eps) * onehot + eps / C``."""

    def __init__(self, n_classes: int, eps: float = 0.1):
        super().__init__(n_classes)
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"smooth eps must be in [0, 1), got {eps}")
        self.eps = eps

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.eps)


LOSSES: dict[str, type[_SlideLoss]] = {
    "ce": CrossEntropy,
    "gce": GeneralizedCE,
    "sce": SymmetricCE,
    "smooth": LabelSmoothingCE,
}


def build_loss(name: str, n_classes: int, **kw: float) -> nn.Module:
    """Build a slide loss by name; ``kw`` are its options (gce: q; sce: alpha, beta, A;
    smooth: eps). Unknown name or option -> ValueError listing the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    allowed = [
        p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "n_classes")
    ]
    bad = sorted(set(kw) - set(allowed))
    if bad:
        valid = ", ".join(allowed) or "none"
        raise ValueError(f"loss {name!r} got unknown option(s) {', '.join(bad)}; valid: {valid}")
    return cls(n_classes, **kw)
