"""Tests for mil.train.model: masked softmax, gated attention, MIL classifier and baselines."""

from __future__ import annotations

import pytest
import torch

from mil.train.model import (
    GatedAttentionPool,
    MILClassifier,
    MILOutput,
    Pooling,
    blast_log_prior,
    masked_softmax,
)

POOLINGS = [p.value for p in Pooling]
D, C = 12, 3


def make_batch(*, lengths: list[int], d: int = D, seed: int = 0, fill: float = 0.0):
    """Random padded batch: feats (B, N, D) with padding set to ``fill``, mask (B, N)."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    feats = torch.randn(len(lengths), n, d, generator=g)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    feats[~mask] = fill
    return feats, mask


def make_model(pooling: str, seed: int = 0) -> MILClassifier:
    torch.manual_seed(seed)
    return MILClassifier(D, C, hidden=16, attn_hidden=8, pooling=pooling).eval()


def test_masked_softmax_zero_on_padding_and_no_nan():
    logits = torch.randn(3, 5, 2)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    a = masked_softmax(logits, mask)
    assert not torch.isnan(a).any()
    torch.testing.assert_close(a[:2].sum(1), torch.ones(2, 2))
    assert (a[0, 2:] == 0).all() and (a[2] == 0).all()
    a2 = masked_softmax(logits[..., 0], mask)  # 2-D form
    torch.testing.assert_close(a2, a[..., 0])


@pytest.mark.parametrize("pooling", POOLINGS)
def test_batched_equals_per_bag_loop(pooling):
    model = make_model(pooling)
    lengths = [7, 1, 4, 9]
    feats, mask = make_batch(lengths=lengths, seed=1, fill=3.0)
    out = model(feats, mask)
    assert isinstance(out, MILOutput)
    k = C if pooling == "gated-multibranch" else 1
    assert out.logits.shape == (4, C) and out.attn.shape == (4, 9, k)
    for i, n in enumerate(lengths):
        single = model(feats[i : i + 1, :n], mask[i : i + 1, :n])
        torch.testing.assert_close(out.logits[i], single.logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.attn[i, :n], single.attn[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_permutation_and_padding_invariance(pooling):
    model = make_model(pooling)
    feats, mask = make_batch(lengths=[6], seed=2)
    ref = model(feats, mask).logits
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    padded = torch.cat([feats[:, perm], torch.full((1, 5, D), 1e6)], dim=1)  # huge padding
    pmask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(padded, pmask).logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("fill", [1e30, float("inf"), float("nan")])
def test_huge_padding_ignored(pooling, fill):
    model = make_model(pooling)
    feats, mask = make_batch(lengths=[5, 3], seed=4)
    ref = model(feats, mask)
    bad = feats.clone()
    bad[~mask] = fill
    out = model(bad, mask)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.attn, ref.attn)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_attention_sums_to_one_on_real_cells(pooling):
    model = make_model(pooling)
    feats, mask = make_batch(lengths=[5, 2, 8], seed=5)
    attn = model(feats, mask).attn
    torch.testing.assert_close(attn.sum(1), torch.ones(3, attn.shape[-1]))
    assert (attn[~mask] == 0).all() and (attn >= 0).all()


def test_mean_attention_uniform():
    feats, mask = make_batch(lengths=[4, 2], seed=6)
    attn = make_model("mean")(feats, mask).attn[..., 0]
    torch.testing.assert_close(attn[0, :4], torch.full((4,), 0.25))
    torch.testing.assert_close(attn[1, :2], torch.full((2,), 0.5))


@pytest.mark.parametrize("pooling", ["gated", "gated-multibranch"])
def test_constant_log_prior_equals_no_prior(pooling):
    model = make_model(pooling)
    feats, mask = make_batch(lengths=[5, 3], seed=7)
    ref = model(feats, mask)
    out = model(feats, mask, log_prior=torch.full(mask.shape, -2.5))
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.attn, ref.attn)


def test_log_prior_shifts_attention():
    pool = GatedAttentionPool(4, hidden=8)
    h, mask = torch.randn(1, 3, 4), torch.ones(1, 3, dtype=torch.bool)
    _, plain = pool(h, mask)
    prior = blast_log_prior(torch.tensor([[1.0, 0.0, 0.0]]), strength=5.0)
    pooled, attn = pool(h, mask, prior)
    assert pooled.shape == (1, 1, 4) and attn.shape == (1, 3, 1)
    assert attn[0, 0, 0] > plain[0, 0, 0] and torch.isfinite(attn).all()


def test_gated_attention_matches_formula():
    pool = GatedAttentionPool(4, hidden=6, branches=2).eval()
    h, mask = torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool)
    pooled, attn = pool(h, mask)
    wv, wu = pool.attn_vu.weight.chunk(2)  # the fused [V; U]
    bv, bu = pool.attn_vu.bias.chunk(2)
    gate = torch.tanh(h[0] @ wv.T + bv) * torch.sigmoid(h[0] @ wu.T + bu)
    expect = torch.softmax(pool.attn_w(gate), dim=0)  # (N, K)
    torch.testing.assert_close(attn[0], expect)
    torch.testing.assert_close(pooled[0], expect.T @ h[0])


def test_float16_input_and_max_baseline():
    model = make_model("max")
    feats, mask = make_batch(lengths=[4], seed=8)
    out = model(feats.half(), mask)
    assert out.logits.dtype == torch.float32
    h = model.project(feats.half().float())[0]  # (N, H)
    expect = model.classifier(h.max(0).values)
    torch.testing.assert_close(out.logits[0], expect)


def test_unknown_pooling_lists_valid():
    with pytest.raises(ValueError, match="gated-multibranch"):
        MILClassifier(D, C, pooling="topk")


def test_backward_runs():
    model = MILClassifier(D, C, hidden=8, attn_hidden=4, pooling="gated-multibranch").train()
    feats, mask = make_batch(lengths=[3, 5], seed=9)
    model(feats, mask).logits.sum().backward()
    assert model.head_weight.grad is not None


def old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as saved before V and U were fused: ``attn_v.*`` / ``attn_u.*``."""
    out = {}
    for k, v in state.items():
        if ".attn_vu." in f".{k}":
            head, part = k.rsplit("attn_vu.", 1)
            out[f"{head}attn_v.{part}"], out[f"{head}attn_u.{part}"] = v.clone().chunk(2)
        else:
            out[k] = v.clone()
    return out


@pytest.mark.parametrize("pooling", ["gated", "gated-multibranch"])
def test_old_checkpoint_layout_loads_with_identical_outputs(pooling):
    ref = make_model(pooling, seed=3)
    old = old_layout(ref.state_dict())
    assert "pool.attn_v.weight" in old and "pool.attn_vu.weight" not in old
    fresh = make_model(pooling, seed=4)
    fresh.load_state_dict(old)  # strict: every old key mapped, nothing missing
    feats, mask = make_batch(lengths=[6, 2, 4], seed=11, fill=float("nan"))
    want, got = ref(feats, mask), fresh(feats, mask)
    assert torch.equal(got.logits, want.logits) and torch.equal(got.attn, want.attn)
    # and against the separate-GEMM formula with the old keys' own tensors
    pool = GatedAttentionPool(16, hidden=8, branches=2).eval()
    sd = old_layout(pool.state_dict())
    h, m = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    gate = torch.tanh(h @ sd["attn_v.weight"].T + sd["attn_v.bias"]) * torch.sigmoid(
        h @ sd["attn_u.weight"].T + sd["attn_u.bias"])  # (B, N, hidden)
    expect = torch.softmax(gate @ sd["attn_w.weight"].T + sd["attn_w.bias"], dim=1)
    loaded = GatedAttentionPool(16, hidden=8, branches=2).eval()
    loaded.load_state_dict(sd)
    torch.testing.assert_close(loaded(h, m)[1], expect)


def test_fused_pool_initialises_as_the_separate_layers_did():
    torch.manual_seed(5)
    v, u, w = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4), torch.nn.Linear(4, 2)
    torch.manual_seed(5)
    pool = GatedAttentionPool(6, hidden=4, branches=2)
    assert torch.equal(pool.attn_vu.weight, torch.cat([v.weight, u.weight]))
    assert torch.equal(pool.attn_vu.bias, torch.cat([v.bias, u.bias]))
    assert torch.equal(pool.attn_w.weight, w.weight)
