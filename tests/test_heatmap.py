"""Attention export: normalisation, safe folders, attention.csv vs the model, placeholders, occlusion."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mil.explain.attention import SlideAttention, percentiles, ranks
from mil.explain.attention import normalise_attention as normalise
from mil.explain.export import export_slide, slide_folder
from mil.explain.occlusion import ensemble_occlusion, occlusion_deltas
from mil.train.model import MILClassifier

CLASSES = ["A", "B", "C"]


def _model(pooling: str, seed: int = 0, dim: int = 6) -> MILClassifier:
    torch.manual_seed(seed)
    return MILClassifier(dim, len(CLASSES), hidden=8, attn_hidden=8, dropout=0.0, pooling=pooling).eval()


def _slide(tmp_path: Path, model: MILClassifier, n: int = 9, *, images: int | None = None,
           slide_id: str = "S1", occlusion: bool = False) -> SlideAttention:
    """A slide scored by ``model``; the first ``images`` cells get image files under tmp_path/src."""
    feats = np.random.default_rng(1).normal(size=(n, 6)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(feats)[None], torch.ones(1, n, dtype=torch.bool))
    probs = out.logits.softmax(-1)[0].numpy()
    paths = [f"slide/c{i}.png" for i in range(n)]
    (tmp_path / "src" / "slide").mkdir(parents=True, exist_ok=True)
    for p in paths[: n if images is None else images]:
        Image.new("RGB", (12, 12), (200, 100, 150)).save(tmp_path / "src" / p)
    occ = occlusion_deltas(model, feats, int(probs.argmax())) if occlusion else None
    return SlideAttention(slide_id, CLASSES, probs, out.attn[0].numpy(), [f"c{i}" for i in range(n)],
                          paths, truth="B", blast_prob=np.linspace(0, 1, n), occlusion=occ,
                          coords=np.random.default_rng(2).uniform(0, 50, (n, 2)))


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_norm_modes() -> None:
    a = np.array([0.1, 0.4, 0.4, 0.1, 0.0])
    assert np.allclose(percentiles(a), [37.5, 87.5, 87.5, 37.5, 0.0])
    assert np.allclose(normalise(a, "rank"), percentiles(a) / 100)
    assert np.allclose(normalise(a, "minmax"), a / 0.4)
    assert np.allclose(normalise(a, "raw"), a)
    tiny = np.full(1000, 1e-3)  # raw on a big bag is dark; rank/minmax state it is flat
    assert normalise(tiny, "raw").max() < 0.01
    assert np.all(normalise(tiny, "rank") == 0.5) and np.all(normalise(tiny, "minmax") == 0.5)
    spread = np.random.default_rng(0).dirichlet(np.ones(500))
    r = normalise(spread, "rank")
    assert r.min() == 0.0 and r.max() == 1.0  # rank always uses the full scale
    assert list(ranks(np.array([0.2, 0.5, 0.2]))) == [2, 1, 3]
    assert percentiles(np.array([3.0])).tolist() == [100.0]


@pytest.mark.parametrize("sid", ["../../x", "/etc/passwd", "..", "a/../../b", "C:\\x", "é x"])
def test_slide_folder_stays_inside(tmp_path: Path, sid: str) -> None:
    out = tmp_path / "out"
    f = slide_folder(out, sid)
    assert f.parent == out and f.resolve().parent == out.resolve()
    assert f.name not in (".", "..") and "/" not in f.name


@pytest.mark.parametrize("pooling", ["gated", "gated-multibranch"])
def test_attention_csv_matches_model(tmp_path: Path, pooling: str) -> None:
    model = _model(pooling)
    sa = _slide(tmp_path, model, occlusion=True)
    res = export_slide(sa, tmp_path / "out", source=tmp_path / "src", top_k=3)
    folder = tmp_path / "out" / res.folder
    rows = _table(folder / "attention.csv")
    k = sa.predicted if pooling == "gated-multibranch" else 0
    got = np.array([float(r["attention"]) for r in rows])
    assert np.allclose(got, sa.attention[:, k], rtol=1e-6)
    assert [r["cell_id"] for r in rows] == sa.cell_ids
    assert [int(r["rank"]) for r in rows] == list(ranks(sa.attention[:, k]))
    assert "blast_prob" in rows[0] and "occlusion_delta" in rows[0]
    if pooling == "gated-multibranch":
        for c, name in enumerate(CLASSES):
            assert np.allclose([float(r[f"attention_{name}"]) for r in rows], sa.attention[:, c], rtol=1e-6)
    else:
        assert "attention_A" not in rows[0]
    assert res.n_missing == 0 and all(r["image_ok"] == "1" for r in rows)
    for f in ("gallery.png", "mosaic.png", "map.png", "thumb.png"):
        assert Image.open(folder / f).size[0] > 0
    assert res.prediction == CLASSES[sa.predicted]


def test_explained_branch_statement() -> None:
    probs = np.array([0.1, 0.7, 0.2])
    multi = SlideAttention("s", CLASSES, probs, np.eye(3)[[0, 1, 2, 1]], list("abcd"), list("abcd"))
    a, text = multi.explained()
    assert np.array_equal(a, [0, 1, 0, 1]) and "'B' branch" in text
    single = SlideAttention("s", CLASSES, probs, np.ones((4, 1)) / 4, list("abcd"), list("abcd"))
    assert "single-branch" in single.explained()[1]


def test_missing_images_are_placeholders_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sa = _slide(tmp_path, _model("gated"), n=6, images=4, slide_id="../../x")
    with caplog.at_level(logging.WARNING, logger="mil.heatmap"):
        res = export_slide(sa, tmp_path / "out", source=tmp_path / "src", top_k=2)
    assert res.n_missing == 2
    assert "2 of 6 cell images missing" in caplog.text
    rows = _table(tmp_path / "out" / res.folder / "attention.csv")
    assert [r["image_ok"] for r in rows] == ["1"] * 4 + ["0"] * 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [res.folder]  # inside out/
    assert not (tmp_path / "x").exists()


def test_occlusion_matches_direct_forward() -> None:
    model = _model("gated-multibranch", seed=3)
    feats = torch.randn(7, 6)
    lp = torch.log(torch.rand(7).clamp(min=0.05))
    target = 2
    deltas = occlusion_deltas(model, feats, target, log_prior=lp, max_elements=6 * 7 * 3)  # 3 per chunk
    with torch.no_grad():
        p_full = model(feats[None], torch.ones(1, 7, dtype=torch.bool), lp[None]).logits.softmax(-1)[0, target]
        for i in range(7):
            keep = [j for j in range(7) if j != i]
            sub = model(feats[keep][None], torch.ones(1, 6, dtype=torch.bool), lp[keep][None])
            assert deltas[i] == pytest.approx(float(p_full - sub.logits.softmax(-1)[0, target]), abs=1e-5)
    models = [model, _model("gated-multibranch", seed=4)]
    ens = ensemble_occlusion(models, feats, target, lp)
    assert np.allclose(ens, (deltas + occlusion_deltas(models[1], feats, target, lp)) / 2)


# -- a run folder, written directly (no training): the CLI end to end --------------------------
def make_run(tmp_path: Path, store: Path, *, pooling: str, weights: str = "none", folds: int = 2) -> Path:
    """A mil.fit-shaped run folder with untrained, seeded fold checkpoints."""
    import pytorch_lightning as pl
    import yaml

    from mil.store import open_store
    from mil.train.lightning_module import MILSystem
    from mil.train.splits import Fold, save_splits

    slides = open_store(store).slides()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"store": str(store), "instance_weights": weights,
                                                     "prior_strength": 1.0}))
    parts = [slides[k::folds] for k in range(folds)]
    save_splits([Fold(sorted(set(slides) - set(p)), [], p) for p in parts], run / "splits.json", {})
    for k in range(folds):
        torch.manual_seed(k)
        system = MILSystem(8, ["A", "B"], pooling=pooling, hidden=8, attn_hidden=8, dropout=0.0,
                           instance_weights=weights, provenance={"feature_dim": 8, "backbone": "test"})
        (run / f"fold_{k}").mkdir()
        torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                    "pytorch-lightning_version": pl.__version__}, run / f"fold_{k}" / "best.ckpt")
    return run


def _direct(run: Path, fold: int | None, bag, weights: str) -> tuple[np.ndarray, np.ndarray]:
    """(probs (C,), attention (N, K)) of fold ``fold`` (None: mean of both) by a plain forward."""
    from mil.train.ensemble import load_system
    from mil.train.model import blast_log_prior

    folds = [fold] if fold is not None else [0, 1]
    feats = torch.from_numpy(bag.features.astype(np.float32))[None]
    lp = blast_log_prior(torch.from_numpy(bag.annotations["blast_prob"])[None]) if weights == "prior" else None
    outs = [load_system(run / f"fold_{k}" / "best.ckpt").model(feats, torch.ones(1, len(bag), dtype=torch.bool), lp)
            for k in folds]
    with torch.no_grad():
        probs = torch.stack([o.logits.softmax(-1)[0] for o in outs]).mean(0).numpy()
        attn = torch.stack([o.attn[0] for o in outs]).mean(0).numpy()
    return probs, attn


def test_cli_attention_matches_the_run(tmp_path: Path) -> None:
    import shutil

    from conftest import make_store

    from mil.heatmap import main
    from mil.store import open_store

    store = tmp_path / "st.h5"
    make_store(store, slides=4, cells=(5, 7), coords=True, blast_prob=True).close()
    run = make_run(tmp_path, store, pooling="gated-multibranch", weights="prior")
    other = tmp_path / "copy.h5"  # same slides, another store: not out-of-fold -> both folds
    shutil.copy(store, other)
    for st_path, out in ((store, tmp_path / "oof"), (other, tmp_path / "ens")):
        assert main([str(run), "--store", str(st_path), "--out", str(out), "--top-k", "2",
                     "--occlusion", "--norm", "minmax"]) == 0
    bag = open_store(store).read("S01")  # fold 1's test part
    for out, fold in ((tmp_path / "oof", 1), (tmp_path / "ens", None)):
        probs, attn = _direct(run, fold, bag, "prior")
        rows = _table(out / "S01" / "attention.csv")
        k = int(probs.argmax())
        assert np.allclose([float(r["attention"]) for r in rows], attn[:, k], rtol=1e-5)
        assert np.allclose([float(r["attention_B"]) for r in rows], attn[:, 1], rtol=1e-5)
        assert np.allclose([float(r["blast_prob"]) for r in rows], bag.annotations["blast_prob"], rtol=1e-5)
        summary = _table(out / "summary.csv")[1]
        assert summary["slide_id"] == "S01" and float(summary["probability"]) == pytest.approx(probs[k], abs=1e-5)
        assert summary["n_missing_images"] == str(len(bag))  # no images anywhere: all placeholders
        assert (out / "S01" / "map.png").is_file() and (out / "index.html").is_file()


def test_cli_user_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mil.heatmap import main

    assert main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a mil.fit run folder" in capsys.readouterr().err
