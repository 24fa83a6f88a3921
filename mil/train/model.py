"""Pure-torch MIL heads: gated-attention pooling (Ilse et al. 2018), a multi-branch variant
(one branch per class, CLAM-MB style) and masked mean / max baselines.

Shapes: B bags, N cells (padded), D input feature dim, H hidden dim, C classes, K branches.
``mask (B, N)`` is True for real cells; every bag has at least one real cell. Attention is
returned from ``forward`` (never stored on ``self``) and is exactly 0 on padding.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mil.train.standardise import FeatureStandardiser


class Pooling(StrEnum):
    """Registry of pooling names accepted by :class:`MILClassifier`."""

    GATED = "gated"
    GATED_MULTIBRANCH = "gated-multibranch"
    MEAN = "mean"
    MAX = "max"


class MILOutput(NamedTuple):
    """What :meth:`MILClassifier.forward` returns."""

    logits: Tensor  # (B, C)
    attn: Tensor  # (B, N, K); K = 1 except gated-multibranch (K = C)


def masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over cells (dim 1) ignoring padding; 0 on padded cells.

    ``logits`` (B, N) or (B, N, K), ``mask`` (B, N). A bag with no real cell gives all zeros
    (not NaN), so it cannot poison the other bags of a batch.
    """
    m = mask if logits.dim() == 2 else mask.unsqueeze(-1)  # (B, N[, 1])
    z = logits.masked_fill(~m, float("-inf"))  # (B, N[, K])
    attn = torch.softmax(z, dim=1)  # (B, N[, K]); NaN only in all-padded bags
    return attn.masked_fill(~m, 0.0)  # (B, N[, K])


def blast_log_prior(prob: Tensor, strength: float = 1.0, eps: float = 1e-4) -> Tensor:
    """``strength * log(p)`` with ``p`` clamped to [eps, 1]: an attention prior from noisy
    per-cell blast probabilities ``prob (B, N)``. Clamping keeps it finite (p = 0 is allowed)."""
    return strength * torch.log(prob.clamp(min=eps, max=1.0))  # (B, N)


class GatedAttentionPool(nn.Module):
    """Gated attention pooling with K branches:
    ``a_k = softmax_n(w_k^T [tanh(V h_n) * sigmoid(U h_n)] + log_prior_n)``, pooled_k = sum a_k h.

    V and U run as one GEMM: ``attn_vu`` is one Linear of 2 x hidden outputs, ``[V; U]``, split
    after. Checkpoints from before the fusion (separate ``attn_v`` / ``attn_u``) load unchanged:
    a load_state_dict pre-hook stacks their keys into ``attn_vu``.
    """

    def __init__(self, in_dim: int, hidden: int = 128, branches: int = 1, dropout: float = 0.0):
        super().__init__()
        # initialised as the separate V and U layers were (same draws, same order), so a seed
        # gives the same weights as before the fusion
        v, u = nn.Linear(in_dim, hidden), nn.Linear(in_dim, hidden)
        self.attn_vu = nn.utils.skip_init(nn.Linear, in_dim, 2 * hidden)
        with torch.no_grad():
            self.attn_vu.weight.copy_(torch.cat([v.weight, u.weight]))  # (2 hidden, in_dim)
            self.attn_vu.bias.copy_(torch.cat([v.bias, u.bias]))  # (2 hidden,)
        self.drop = nn.Dropout(dropout)
        self.attn_w = nn.Linear(hidden, branches)
        self.branches = branches
        self.register_load_state_dict_pre_hook(_fuse_vu_keys)

    def forward(
        self, h: Tensor, mask: Tensor, log_prior: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``h (B, N, H)``, ``mask (B, N)``, ``log_prior (B, N)`` added to the attention logits.

        Padded rows of ``h`` must be finite (:class:`MILClassifier` zeroes them after the
        projection, so they are not masked again here); they get attention exactly 0.
        Returns ``pooled (B, K, H)`` and ``attn (B, N, K)``.
        """
        v, u = self.attn_vu(h).chunk(2, dim=-1)  # (B, N, hidden) each, one GEMM
        gate = torch.tanh(v) * torch.sigmoid(u)  # (B, N, hidden)
        logits = self.attn_w(self.drop(gate))  # (B, N, K)
        if log_prior is not None:
            logits = logits + log_prior.to(logits.dtype).unsqueeze(-1)  # (B, N, K)
        attn = masked_softmax(logits, mask)  # (B, N, K)
        pooled = torch.einsum("bnk,bnh->bkh", attn, h)  # (B, K, H)
        return pooled, attn


def _fuse_vu_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                  *_: object) -> None:
    """load_state_dict pre-hook: the old ``attn_v.*`` / ``attn_u.*`` keys -> ``attn_vu.*``."""
    for part in ("weight", "bias"):
        v, u = f"{prefix}attn_v.{part}", f"{prefix}attn_u.{part}"
        if v in state_dict and u in state_dict:
            state_dict[f"{prefix}attn_vu.{part}"] = torch.cat([state_dict.pop(v),
                                                               state_dict.pop(u)])


def masked_mean_pool(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over real cells. Returns ``pooled (B, H)`` and uniform ``attn (B, N, 1)``."""
    m = mask.unsqueeze(-1)  # (B, N, 1)
    count = m.sum(dim=1).clamp(min=1).to(h.dtype)  # (B, 1)
    pooled = h.masked_fill(~m, 0.0).sum(dim=1) / count  # (B, H)
    attn = m.to(h.dtype) / count.unsqueeze(1)  # (B, N, 1)
    return pooled, attn


def masked_max_pool(h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Feature-wise max over real cells. Returns ``pooled (B, H)`` and ``attn (B, N, 1)``:
    each cell's share of the H argmax positions (the fraction of features it wins), so it sums
    to 1 over real cells and is 0 on padding. Ties go to the first index torch picks."""
    b, n, hdim = h.shape
    z = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, N, H)
    pooled, idx = z.max(dim=1)  # (B, H), (B, H)
    wins = torch.zeros(b, n, dtype=h.dtype, device=h.device)  # (B, N)
    wins.scatter_add_(1, idx, torch.ones_like(pooled))  # (B, N)
    return pooled, (wins / hdim).unsqueeze(-1)  # (B, H), (B, N, 1)


class MILClassifier(nn.Module):
    """Bag classifier: project cells (Linear+ReLU+Dropout), pool, classify.

    ``pooling``: ``gated`` (one attention branch, linear classifier), ``gated-multibranch``
    (one branch per class, each pooled vector scored by its own linear head), ``mean`` or
    ``max`` (masked baselines). ``standardise``: standardise the features first with stored
    statistics (:class:`mil.train.standardise.FeatureStandardiser`).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden: int = 128,
        attn_hidden: int = 128,
        dropout: float = 0.25,
        pooling: str = "gated",
        standardise: bool = False,
    ):
        super().__init__()
        valid = [p.value for p in Pooling]
        if pooling not in valid:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(valid)}")
        self.pooling = Pooling(pooling)
        self.n_classes = n_classes
        # per-feature (x - mean) / std with stored statistics (mil.train.standardise); absent in
        # a model without it, so its checkpoints keep their keys
        self.norm = FeatureStandardiser(in_dim) if standardise else None
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.pool: GatedAttentionPool | None = None
        if self.pooling in (Pooling.GATED, Pooling.GATED_MULTIBRANCH):
            k = n_classes if self.pooling is Pooling.GATED_MULTIBRANCH else 1
            self.pool = GatedAttentionPool(hidden, attn_hidden, branches=k, dropout=dropout)
        if self.pooling is Pooling.GATED_MULTIBRANCH:
            # one linear head per class: logit_c = <w_c, pooled_c> + b_c
            self.head_weight = nn.Parameter(torch.empty(n_classes, hidden))  # (C, H)
            self.head_bias = nn.Parameter(torch.zeros(n_classes))  # (C,)
            nn.init.kaiming_uniform_(self.head_weight, a=5**0.5)
        else:
            self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, feats: Tensor, mask: Tensor, log_prior: Tensor | None = None) -> MILOutput:
        """``feats (B, N, D)`` (any float dtype, cast to the module's), ``mask (B, N)``,
        ``log_prior (B, N)`` optional attention prior (ignored by mean / max pooling)."""
        dtype = next(self.parameters()).dtype
        mask = mask.bool()
        # Padding is zeroed after the projection, on (B, N, H) rather than the 10x larger
        # (B, N, D) input: each row of h depends only on its own cell, so inf/NaN padding
        # stays confined to padded rows and is replaced here.
        x = feats.to(dtype)  # (B, N, D)
        if self.norm is not None:
            x = self.norm(x)  # (B, N, D)
        h = self.project(x).masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, N, H)
        if self.pool is not None:
            pooled, attn = self.pool(h, mask, log_prior)  # (B, K, H), (B, N, K)
            if self.pooling is Pooling.GATED_MULTIBRANCH:
                logits = (pooled * self.head_weight).sum(-1) + self.head_bias  # (B, C)
            else:
                logits = self.classifier(pooled[:, 0])  # (B, C)
            return MILOutput(logits, attn)
        pool_fn = masked_mean_pool if self.pooling is Pooling.MEAN else masked_max_pool
        pooled, attn = pool_fn(h, mask)  # (B, H), (B, N, 1)
        return MILOutput(self.classifier(pooled), attn)  # (B, C), (B, N, 1)
