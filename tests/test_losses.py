"""Tests for mil.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mil.losses import LOSSES, build_loss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])
TARGETS = torch.tensor([0, 2])


def probs_y() -> torch.Tensor:
    return torch.softmax(LOGITS, dim=1)[torch.arange(2), TARGETS]


def test_ce_hand_value():
    p = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    q = math.exp(1) / (2 * math.exp(0.5) + math.exp(1))
    expect = (-math.log(p) - math.log(q)) / 2
    assert build_loss("ce", 3)(LOGITS, TARGETS).item() == pytest.approx(expect, rel=1e-6)


def test_gce_formula_and_limits():
    p = probs_y()
    gce = build_loss("gce", 3)  # q = 0.7
    expect = ((1 - p**0.7) / 0.7).mean()
    torch.testing.assert_close(gce(LOGITS, TARGETS), expect)
    ce = F.cross_entropy(LOGITS, TARGETS)
    near_ce = build_loss("gce", 3, q=1e-5)(LOGITS, TARGETS)
    torch.testing.assert_close(near_ce, ce, atol=1e-4, rtol=1e-4)
    mae = build_loss("gce", 3, q=1.0)(LOGITS, TARGETS)
    torch.testing.assert_close(mae, (1 - p).mean())


def test_sce_formula():
    p = probs_y()
    ce = F.cross_entropy(LOGITS, TARGETS, reduction="none")
    expect = (0.1 * ce + 1.0 * 4.0 * (1 - p)).mean()  # RCE = -A (1 - p_y), A = -4
    torch.testing.assert_close(build_loss("sce", 3)(LOGITS, TARGETS), expect)
    custom = build_loss("sce", 3, alpha=0.5, beta=2.0, A=-2.0)(LOGITS, TARGETS)
    torch.testing.assert_close(custom, (0.5 * ce + 2.0 * 2.0 * (1 - p)).mean())


def test_label_smoothing():
    ce = F.cross_entropy(LOGITS, TARGETS)
    torch.testing.assert_close(build_loss("smooth", 3, eps=0.0)(LOGITS, TARGETS), ce)
    logp = torch.log_softmax(LOGITS, dim=1)
    nll = -logp[torch.arange(2), TARGETS]
    expect = (0.9 * nll + 0.1 * (-logp.mean(1))).mean()  # eps = 0.1 default
    torch.testing.assert_close(build_loss("smooth", 3)(LOGITS, TARGETS), expect)


@pytest.mark.parametrize("name", list(LOSSES))
def test_weights_are_weighted_mean(name):
    loss = build_loss(name, 3)
    per = torch.stack([loss(LOGITS[i : i + 1], TARGETS[i : i + 1]) for i in range(2)])
    w = torch.tensor([3.0, 1.0])
    torch.testing.assert_close(loss(LOGITS, TARGETS, w), (w * per).sum() / w.sum())
    torch.testing.assert_close(loss(LOGITS, TARGETS, torch.ones(2)), loss(LOGITS, TARGETS))


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients_finite_on_confident_wrong(name):
    logits = torch.tensor([[50.0, -50.0, 0.0]], requires_grad=True)
    build_loss(name, 3)(logits, torch.tensor([1])).backward()
    assert torch.isfinite(logits.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="valid: ce, gce, sce, smooth"):
        build_loss("focal", 3)
    with pytest.raises(ValueError, match="unknown option.*eps.*valid: q"):
        build_loss("gce", 3, eps=0.1)
    with pytest.raises(ValueError, match="q must be"):
        build_loss("gce", 3, q=0.0)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        build_loss("ce", 4)(LOGITS, TARGETS)
