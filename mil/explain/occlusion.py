"""Leave-one-cell-out occlusion: how much the predicted class's probability drops without a cell.

For a bag of N cells, N bags each missing one cell are one masked batch: ``mask = ~eye(N)``.
``delta_n = p_full - p_without_n`` for the explained class (positive: the cell supported the
call). For a fold ensemble the deltas are averaged over the models (the ensemble's probability is
the mean of the models', so this is exactly the ensemble's own delta).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

MAX_BATCH_ELEMENTS = 2**24  # feature values per forward pass (bounds memory for large bags)


def _probs(model: nn.Module, feats: Tensor, mask: Tensor, log_prior: Tensor | None,
           sigmoid: bool = False) -> Tensor:
    """Class probabilities (B, C) of ``model`` on ``feats (B, N, D)``, ``mask (B, N)``
    (``sigmoid``: one probability per target of a multi-label model)."""
    out = model(feats, mask, log_prior)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, C)
    return torch.sigmoid(logits.float()) if sigmoid else torch.softmax(logits.float(), dim=-1)


@torch.inference_mode()
def occlusion_deltas(model: nn.Module, feats: np.ndarray | Tensor, target: int,
                     log_prior: np.ndarray | Tensor | None = None,
                     max_elements: int = MAX_BATCH_ELEMENTS, sigmoid: bool = False) -> np.ndarray:
    """``p_full[target] - p_without_n[target]`` for every cell n of one bag ``feats (N, D)``.

    ``log_prior (N,)`` is the attention prior the model was trained with, if any. Rows are
    processed in chunks so that at most ``max_elements`` feature values are in one batch.
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(feats) if not isinstance(feats, Tensor) else feats)
    x = x.to(device).float()  # (N, D)
    n, d = x.shape
    lp = None if log_prior is None else torch.as_tensor(log_prior).to(device).float()  # (N,)
    full_mask = torch.ones(1, n, dtype=torch.bool, device=device)  # (1, N)
    p_full = _probs(model, x[None], full_mask, None if lp is None else lp[None], sigmoid)[0, target]
    chunk = max(1, max_elements // max(1, n * d))
    out = np.empty(n, np.float64)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=device)  # (b,)
        mask = torch.ones(len(rows), n, dtype=torch.bool, device=device)  # (b, N)
        mask[torch.arange(len(rows), device=device), rows] = False  # leave cell `row` out
        feats_b = x[None].expand(len(rows), n, d)  # (b, N, D), no copy
        lp_b = None if lp is None else lp[None].expand(len(rows), n)  # (b, N)
        p = _probs(model, feats_b, mask, lp_b, sigmoid)[:, target]  # (b,)
        out[start:start + len(rows)] = (p_full - p).double().cpu().numpy()
    return out


def ensemble_occlusion(models: Sequence[nn.Module], feats: np.ndarray | Tensor, target: int,
                       log_prior: np.ndarray | Tensor | None = None) -> np.ndarray:
    """Mean over ``models`` of :func:`occlusion_deltas` (N,): the fold ensemble's own delta."""
    if not models:
        raise ValueError("ensemble_occlusion needs at least one model")
    deltas = [occlusion_deltas(m, feats, target, log_prior) for m in models]
    return np.mean(np.stack(deltas), axis=0)  # (N,)


def system_occlusion(systems: Sequence[nn.Module], feats: np.ndarray, prob: np.ndarray | None,
                     target: int) -> np.ndarray:
    """:func:`ensemble_occlusion` for trained :class:`mil.train.lightning_module.MILSystem` s,
    with the attention prior their own ``log_prior`` makes from the bag's tempered ``prob (N,)``;
    a multi-label model's target probability is its sigmoid."""
    deltas = []
    for s in systems:
        p = None if prob is None else torch.as_tensor(prob, dtype=torch.float32)  # (N,)
        deltas.append(occlusion_deltas(s.model, feats, target, s.log_prior(p),
                                       sigmoid=getattr(s, "multilabel", False)))
    return np.mean(np.stack(deltas), axis=0)  # (N,)
