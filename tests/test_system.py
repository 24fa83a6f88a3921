"""Tests for mil.train.lightning_module: batched predict path vs a per-bag loop, invariances, prior, DDP."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mil.train.data import collate_bags
from mil.train.lightning_module import MILSystem, warmup_cosine
from tests.conftest import make_labelled_store

D = 6


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU


def bags(lengths: list[int], seed: int = 0, prob: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"feats": torch.randn(n, D, generator=g),
             "prob": torch.rand(n, generator=g) if prob else None, "label": i % 3, "index": i}
            for i, n in enumerate(lengths)]


def system(pooling: str = "gated", weights: str = "prior") -> MILSystem:
    torch.manual_seed(0)
    return MILSystem(D, ["a", "b", "c"], pooling=pooling, hidden=8, attn_hidden=4,
                     instance_weights=weights, prior_strength=1.5).eval()


@pytest.mark.parametrize("pooling", ["gated", "gated-multibranch", "mean"])
def test_batched_predict_equals_per_bag_loop(pooling: str):
    sys_, items = system(pooling), bags([7, 1, 4, 9])
    with torch.no_grad():
        batched = sys_.predict_step(collate_bags(items))
        for item, got in zip(items, batched, strict=True):
            (alone,) = sys_.predict_step(collate_bags([item]))
            torch.testing.assert_close(got["probs"], alone["probs"], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got["attn"], alone["attn"], atol=1e-5, rtol=1e-4)
            assert got["attn"].shape[0] == item["feats"].shape[0]


def test_padding_and_cell_order_do_not_change_a_bag():
    sys_, (item,) = system(), bags([6])
    perm = torch.randperm(6)
    shuffled = {**item, "feats": item["feats"][perm], "prob": item["prob"][perm]}
    with torch.no_grad():
        (ref,) = sys_.predict_step(collate_bags([item]))
        (pad,) = sys_.predict_step(collate_bags([item, *bags([20], seed=1)]))[:1]
        (perm_out,) = sys_.predict_step(collate_bags([shuffled]))
    torch.testing.assert_close(pad["probs"], ref["probs"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(perm_out["probs"], ref["probs"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(perm_out["attn"], ref["attn"][perm], atol=1e-5, rtol=1e-4)


def test_prior_with_equal_probabilities_equals_none():
    items = bags([5, 3])
    equal = [{**it, "prob": torch.full_like(it["prob"], 0.37)} for it in items]
    with torch.no_grad():
        a = system(weights="prior").predict_step(collate_bags(equal))
        b = system(weights="none").predict_step(collate_bags(items))
        c = system(weights="prior").predict_step(collate_bags(items))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["probs"], y["probs"])
        torch.testing.assert_close(x["attn"], y["attn"])
    assert not torch.allclose(c[0]["attn"], b[0]["attn"])  # unequal probabilities do act


def test_warmup_cosine_schedule():
    f = [warmup_cosine(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[99] < 0.01
    assert all(a >= b for a, b in zip(f[9:], f[10:], strict=False))


def _val_losses(log_csv: Path) -> list[float]:
    with log_csv.open() as fh:
        return [float(r["val/loss"]) for r in csv.DictReader(fh) if r.get("val/loss")]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_full_data_metrics(tmp_path: Path):
    """2-process DDP (gloo, ddp_fork: no re-import): the logged val loss of the best epoch equals the loss of
    best.ckpt recomputed in one process over all validation slides, and training gets
    close to the one-process run."""
    from mil.train.config import FitConfig
    from mil.train.crossval import quiet_lightning, train_fold
    from mil.train.data import BagSource
    from mil.train.ensemble import load_system, run_models
    from mil.train.instance_weights import InstanceWeights
    from mil.train.splits import Fold

    quiet_lightning()
    st, _ = make_labelled_store(tmp_path / "s.h5", slides=20, shift=3.0)
    sids = st.slides()
    label_of = {s: i % 2 for i, s in enumerate(sids)}
    fold = Fold(train=sids[:14], val=sids[14:], test=[])
    source = BagSource(st.path, sids, InstanceWeights("prior"))
    st.close()
    results = {}
    for name, kw in {"one": {}, "ddp": {"strategy": "ddp_fork", "devices": "2"}}.items():
        cfg = FitConfig(epochs=6, batch_size=4, hidden=8, attn_hidden=4, accelerator="cpu",
                        progress=False, instance_weights="prior", lr=3e-3, **kw)
        fold_dir = tmp_path / name
        best = train_fold(cfg, source, label_of, ["A", "B"], fold, fold_dir, 0, {})
        logged = min(_val_losses(fold_dir / "logs" / "metrics.csv"))
        system = load_system(best)
        out = run_models([system], source, fold.val)
        logits = torch.stack([torch.as_tensor(out[s][0]) for s in fold.val]).log()
        full = F.cross_entropy(logits, torch.tensor([label_of[s] for s in fold.val])).item()
        assert logged == pytest.approx(full, abs=1e-4)  # synced over ranks = all val data
        results[name] = full
    assert results["ddp"] == pytest.approx(results["one"], abs=0.25)
