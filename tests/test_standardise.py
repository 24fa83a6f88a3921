"""Standardised features inside the MIL model: statistics stored and applied, cohort mode,
old checkpoints unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.fit import main as fit_main
from mil.stats import RunningMoments
from mil.store import open_store
from mil.train.ensemble import load_system
from mil.train.predict import predict_cohort
from mil.train.splits import load_splits
from tests.conftest import make_labelled_store

SCALE = np.array([0.5, 2.0, 4.0, 2.0, 0.5, 4.0, 2.0, 0.5])  # powers of two: exact in float16
SHIFT = np.array([-3.0, 1.0, 8.0, -1.0, 2.0, -8.0, 0.5, 3.0])


pytestmark = pytest.mark.usefixtures("one_thread")


def test_running_moments_match_numpy_over_chunks():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 5)).astype(np.float16)
    acc = RunningMoments()
    for part in np.array_split(x, [3, 10, 11, 500]):
        acc.update(part)
    ref = x.astype(np.float64)
    assert acc.n == 1000
    assert np.allclose(acc.mean, ref.mean(0), atol=1e-12) and np.allclose(acc.std, ref.std(0))


def test_fold_checkpoint_stores_its_training_cells_stats(fit_run):
    folds, _ = load_splits(fit_run["out"] / "splits.json")
    st = open_store(fit_run["store"])
    cells = np.concatenate([st.features(s).astype(np.float16).astype(np.float64)
                            for s in folds[0].train])
    system = load_system(fit_run["out"] / "fold_0" / "best.ckpt")
    assert system.hparams["standardise"] == "cohort"  # the default; trained as train
    assert np.allclose(system.model.norm.mean.numpy(), cells.mean(0), atol=1e-5)
    assert np.allclose(system.model.norm.std.numpy(), cells.std(0), atol=1e-5)
    # and applied in forward: the model equals its projection of the standardised features
    feats = torch.from_numpy(cells[:7].astype(np.float32))[None]  # (1, 7, D)
    mask = torch.ones(1, 7, dtype=torch.bool)
    with torch.no_grad():
        got = system.model(feats, mask).logits
        norm = system.model.norm
        system.model.norm = None
        ref = system.model((feats - norm.mean) / norm.std, mask).logits
    assert torch.allclose(got, ref, atol=1e-6)


def test_old_checkpoint_without_stats_loads_and_predicts_identically(tmp_path: Path):
    import pytorch_lightning as pl

    from mil.train.lightning_module import MILSystem

    torch.manual_seed(0)
    system = MILSystem(8, ["A", "B"], hidden=8, attn_hidden=4, dropout=0.0).eval()
    hp = {k: v for k, v in system.hparams.items() if k != "standardise"}  # as saved before
    assert not any("norm" in k for k in system.state_dict())
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": hp,
                "pytorch-lightning_version": pl.__version__}, tmp_path / "old.ckpt")
    loaded = load_system(tmp_path / "old.ckpt")
    assert loaded.model.norm is None
    feats, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(loaded.model(feats, mask).logits, system.model(feats, mask).logits)


def _quantise(path: Path) -> None:
    """Round every feature to a multiple of 1/16, so scaled-and-shifted copies are exact."""
    with open_store(path, "a") as st:
        for sid in st.slides():
            x = np.round(st.features(sid).astype(np.float32) * 16) / 16
            prob = st.annotation(sid, "blast_prob")
            st.write_slide(sid, x.astype(np.float16), st.strings(sid, "cell_ids"),
                           st.strings(sid, "paths"))
            st.write_annotation(sid, "blast_prob", prob)


def _shifted_copy(src: Path, dst: Path) -> None:
    """Every feature d of every cell becomes SCALE[d] * x + SHIFT[d] (a stain batch)."""
    with open_store(src) as a, open_store(dst, "a") as b:
        b.init(dict(a.attrs))
        for sid in a.slides():
            x = a.features(sid).astype(np.float64) * SCALE + SHIFT
            assert np.array_equal(x.astype(np.float16).astype(np.float64), x)  # exact
            b.write_slide(sid, x.astype(np.float16), a.strings(sid, "cell_ids"),
                          a.strings(sid, "paths"))
            b.write_annotation(sid, "blast_prob", a.annotation(sid, "blast_prob"))


@pytest.mark.slow
def test_cohort_mode_gives_the_same_calls_on_a_shifted_and_scaled_store(tmp_path: Path, capsys):
    st, labels = make_labelled_store(tmp_path / "a.h5")
    st.close()
    _quantise(tmp_path / "a.h5")
    _shifted_copy(tmp_path / "a.h5", tmp_path / "b.h5")
    run = tmp_path / "run"
    assert fit_main([str(tmp_path / "a.h5"), "--labels", str(labels), "--out", str(run),
                     "--folds", "3", "--epochs", "3", "--batch-size", "4", "--hidden", "8",
                     "--attn-hidden", "4", "--instance-weights", "prior", "--no-progress",
                     "--standardise", "cohort", "--final-seeds", "1", "--no-baselines"]) == 0
    a, b = predict_cohort(run, tmp_path / "a.h5"), predict_cohort(run, tmp_path / "b.h5")
    assert any("cohort (mean/std re-estimated on the" in n for n in b.notes)
    pa, pb = np.stack([p.probs for p in a.slides]), np.stack([p.probs for p in b.slides])
    assert np.allclose(pa, pb, atol=1e-5)
    assert [p.call for p in a.slides] == [p.call for p in b.slides]
    # a store too small to estimate a cohort from keeps the training statistics, and says so
    small = tmp_path / "small.h5"
    with open_store(tmp_path / "b.h5") as b, open_store(small, "a") as c:
        c.init(dict(b.attrs))
        for sid in b.slides()[:3]:
            c.write_slide(sid, b.features(sid), b.strings(sid, "cell_ids"), b.strings(sid, "paths"))
            c.write_annotation(sid, "blast_prob", b.annotation(sid, "blast_prob"))
    few = predict_cohort(run, small)
    assert any("has only 3 slide(s); the training cells' mean/std kept" in n for n in few.notes)
    assert few.standardise == "train"
    # the control: the same models with the training cells' statistics are moved by the shift
    for ckpt in run.glob("**/*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        state["hyper_parameters"]["standardise"] = "train"
        torch.save(state, ckpt)
    fixed = predict_cohort(run, tmp_path / "b.h5")
    assert not np.allclose(np.stack([p.probs for p in fixed.slides]), pb, atol=1e-2)
    assert np.allclose([p.probs for p in few.slides], [p.probs for p in fixed.slides[:3]],
                       atol=1e-5)  # the fallback is exactly the training statistics
    capsys.readouterr()


def test_fit_with_standardise_none_stores_no_stats(fit_run, tmp_path: Path):
    out = tmp_path / "none"
    argv = [*fit_run["argv"][:3], "--out", str(out), *fit_run["argv"][5:],
            "--standardise", "none", "--final-seeds", "0", "--no-baselines",
            "--calibration", "none", "--threshold", "argmax"]
    assert fit_main(argv) == 0
    system = load_system(out / "fold_0" / "best.ckpt")
    assert system.model.norm is None and system.hparams["standardise"] == "none"
    shutil.rmtree(out)
