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


# -- multi-label: one sigmoid per target, unknown labels masked -------------------------------
class MaskedBinaryLoss(nn.Module):
    """The binary counterparts of :data:`LOSSES` for ``logits (B, T)`` and ``targets (B, T)``
    holding 1, 0 or NaN (unknown: no loss). ``pos_weight (T,)`` weights the positives of each
    target (e.g. negatives / positives on the training slides). The result is the weighted mean
    over the known labels.

    ``ce``: BCE; ``gce``: ``(1 - p_y^q) / q`` with ``p_y = sigmoid(z)`` for a positive and
    ``1 - sigmoid(z)`` for a negative; ``sce``: ``alpha * BCE + beta * (-A) * (1 - p_y)``;
    ``smooth``: BCE against ``y (1 - eps) + eps / 2``.
    """

    def __init__(self, kind: str = "ce", pos_weight: Tensor | None = None, q: float = 0.7,
                 alpha: float = 0.1, beta: float = 1.0, A: float = -4.0, eps: float = 0.1):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
        self.kind, self.q, self.alpha, self.beta, self.A, self.eps = kind, q, alpha, beta, A, eps
        self.register_buffer("pos_weight", None if pos_weight is None
                             else torch.as_tensor(pos_weight, dtype=torch.float32))

    def per_label(self, z: Tensor, y: Tensor) -> Tensor:  # (B, T), (B, T) in {0, 1} -> (B, T)
        target = y * (1 - self.eps) + self.eps / 2 if self.kind == "smooth" else y
        bce = F.binary_cross_entropy_with_logits(z, target, reduction="none")  # (B, T)
        if self.kind in ("ce", "smooth"):
            return bce
        log_py = -F.binary_cross_entropy_with_logits(z, y, reduction="none")  # (B, T) log p_y
        if self.kind == "gce":
            return -torch.expm1(self.q * log_py) / self.q
        return self.alpha * bce + self.beta * (-self.A) * (1.0 - log_py.exp())  # sce

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
        known = ~torch.isnan(targets)  # (B, T)
        y = torch.nan_to_num(targets.float(), nan=0.0)  # (B, T)
        loss = self.per_label(logits.float(), y)  # (B, T)
        w = known.float()  # (B, T)
        if self.pos_weight is not None:
            w = w * torch.where(y > 0.5, self.pos_weight.to(w.dtype), torch.ones_like(w))
        return (w * loss).sum() / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
