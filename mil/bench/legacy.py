"""The training path as it was before issue 16, kept for the before/after row of ``mil.bench fit``.

Before: the gated attention ran V and U as two GEMMs and re-masked its input that the classifier
had already masked. :func:`legacy_model` swaps that pool, with the same weights, into a current
:class:`mil.train.model.MILClassifier`, so both paths train the same model in one process.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mil.train.model import GatedAttentionPool, MILClassifier, masked_softmax


class LegacyGatedAttentionPool(nn.Module):
    """The pre-fusion pool: separate ``attn_v`` / ``attn_u`` (the old checkpoint layout)."""

    def __init__(self, in_dim: int, hidden: int = 128, branches: int = 1, dropout: float = 0.0):
        super().__init__()
        self.attn_v = nn.Linear(in_dim, hidden)
        self.attn_u = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.attn_w = nn.Linear(hidden, branches)

    def forward(self, h: Tensor, mask: Tensor, log_prior: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        h = h.masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, N, H), the second masking copy
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))  # (B, N, hidden)
        logits = self.attn_w(self.drop(gate))  # (B, N, K)
        if log_prior is not None:
            logits = logits + log_prior.to(logits.dtype).unsqueeze(-1)  # (B, N, K)
        attn = masked_softmax(logits, mask)  # (B, N, K)
        return torch.einsum("bnk,bnh->bkh", attn, h), attn  # (B, K, H), (B, N, K)


def legacy_pool(pool: GatedAttentionPool) -> LegacyGatedAttentionPool:
    """A legacy pool holding ``pool``'s weights (V and U split back out of ``attn_vu``)."""
    hidden2, in_dim = pool.attn_vu.weight.shape
    old = LegacyGatedAttentionPool(in_dim, hidden2 // 2, pool.branches, pool.drop.p)
    w, b = pool.attn_vu.weight.detach().chunk(2), pool.attn_vu.bias.detach().chunk(2)
    with torch.no_grad():
        for lin, wi, bi in ((old.attn_v, w[0], b[0]), (old.attn_u, w[1], b[1])):
            lin.weight.copy_(wi)
            lin.bias.copy_(bi)
        old.attn_w.load_state_dict(pool.attn_w.state_dict())
    return old


def legacy_model(model: MILClassifier) -> MILClassifier:
    """``model`` with its gated pool replaced by the legacy one (same weights), in place."""
    if model.pool is not None:
        model.pool = legacy_pool(model.pool)  # type: ignore[assignment]
    return model
