"""Tests for python -m mil.predict and predict_slides."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.predict import main
from mil.store import file_name, open_store
from mil.train.ensemble import load_system
from mil.train.predict import predict_slides
from tests.conftest import make_store


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_predict_slides_ensemble(fit_run):
    preds = predict_slides(fit_run["out"], slides=["S03", "S00"])
    assert [p.slide_id for p in preds] == ["S03", "S00"]
    st = open_store(fit_run["store"])
    for p in preds:
        n = st.n_cells(p.slide_id)
        assert p.probs.shape == (2,) and p.probs.sum() == pytest.approx(1, abs=1e-5)
        assert p.attention.shape == (n, 1) and p.attention.sum() == pytest.approx(1, abs=1e-4)
        assert len(p.cell_ids) == len(p.paths) == n and p.blast_prob.shape == (n,)
    oof = {r["slide_id"]: r for r in csv.DictReader((fit_run["out"] / "predictions.csv").open())}
    assert set(oof) >= {"S00", "S03"}  # the same slides were scored out-of-fold


def test_checkpoint_loads_weights_only(fit_run):
    system = load_system(fit_run["out"] / "fold_0" / "best.ckpt")
    assert system.hparams["classes"] == ["A", "B"] and not system.training
    assert system.hparams["provenance"]["feature_dim"] == 8


def test_checkpoint_saved_before_the_vu_fusion_loads_with_identical_outputs(fit_run, tmp_path):
    """A Lightning checkpoint with separate ``attn_v`` / ``attn_u`` (before issue 16) loads
    through the attention's pre-hook and predicts exactly what the fused layout does."""
    path = fit_run["out"] / "fold_0" / "best.ckpt"
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    for part in ("weight", "bias"):
        sd["model.pool.attn_v." + part], sd["model.pool.attn_u." + part] = (
            sd.pop("model.pool.attn_vu." + part).clone().chunk(2))
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, str(old))
    new_sys, old_sys = load_system(path), load_system(old)
    g = torch.Generator().manual_seed(0)
    batch = {"feats": torch.randn(2, 7, 8, generator=g), "mask": torch.ones(2, 7, dtype=torch.bool),
             "prob": torch.rand(2, 7, generator=g)}
    with torch.no_grad():
        a, b = new_sys(batch), old_sys(batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.attn, b.attn)


def test_cli_writes_predictions_and_attention(fit_run, tmp_path: Path):
    out, attn = tmp_path / "p.csv", tmp_path / "attn"
    argv = [str(fit_run["out"]), "--store", str(fit_run["store"]), "--out", str(out),
            "--attention", str(attn), "--slides", "S01,S02"]
    assert main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["slide_id", "prediction", "prob_A", "prob_B"] and len(rows) == 2
    cells = list(csv.DictReader((attn / f"{file_name('S01')}.csv").open()))
    assert list(cells[0]) == ["cell_id", "path", "attention", "blast_prob"]
    assert sum(float(c["attention"]) for c in cells) == pytest.approx(1, abs=1e-3)


def test_refuses_store_of_another_feature_dim(fit_run, tmp_path: Path, capsys):
    make_store(tmp_path / "other.h5", slides=2, dim=5, blast_prob=True).close()
    argv = [str(fit_run["out"]), "--store", str(tmp_path / "other.h5"), "--out", str(tmp_path / "p.csv")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "feature_dim 5 differs from the run's 8" in err


def test_filter_mode_gives_zero_attention_to_dropped_cells(fit_run, tmp_path: Path):
    import yaml

    run = tmp_path / "run"
    import shutil

    shutil.copytree(fit_run["out"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["instance_weights"] = "filter"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (p,) = predict_slides(run, slides=["S00"])
    prob = open_store(fit_run["store"]).annotation("S00", "blast_prob")
    kept = (0.8 * prob + 0.1) >= 0.5  # tempered with the run's noise rate 0.1
    assert np.all(p.attention[~kept] == 0) and p.attention[kept].sum() == pytest.approx(1, abs=1e-4)


PREPROCESSING = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                 "interpolation": "bicubic"}


@pytest.fixture(scope="module")
def run_with_preprocessing(fit_run, tmp_path_factory) -> Path:
    """fit_run, as if its store had recorded mean, std and interpolation too."""
    run = tmp_path_factory.mktemp("prep") / "run"
    import shutil

    shutil.copytree(fit_run["out"], run)
    for ckpt in run.glob("**/*.ckpt"):  # the fold models and the final models
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state["hyper_parameters"]["provenance"].update(PREPROCESSING)
        torch.save(state, ckpt)
    return run


@pytest.mark.parametrize(("key", "value"), [(None, None), ("image_size", 64),
                                            ("mean", [0.4, 0.5, 0.5]), ("std", [0.2, 0.25, 0.25]),
                                            ("interpolation", "bilinear"), ("dtype", "float32")])
def test_refuses_store_with_other_preprocessing(run_with_preprocessing, tmp_path, capsys, key, value):
    """One provenance check (mil.provenance.FEATURE_KEYS) for every stage, mil.predict included;
    key None: the same preprocessing, accepted."""
    other = {} if key in (None, "dtype") else {key: value}
    make_store(tmp_path / "s.h5", slides=2, blast_prob=True, attrs={**PREPROCESSING, **other},
               dtype="float32" if key == "dtype" else "float16").close()
    rc = main([str(run_with_preprocessing), "--store", str(tmp_path / "s.h5"),
               "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip()
    if key is None:
        assert rc == 0 and (tmp_path / "p.csv").is_file()
        return
    assert rc == 2 and "\n" not in err and f"{key} {value!r} differs from the run's" in err


def test_output_names_are_distinct_on_case_insensitive_and_windows_disks(fit_run, tmp_path):
    from mil.heatmap import main as heatmap_main

    ids = ["Case", "case", "CON", "nul.txt", "S07"]
    st = make_store(tmp_path / "odd.h5", slides=0)
    rng = np.random.default_rng(0)
    for sid in ids:
        st.write_slide(sid, rng.normal(size=(4, 8)).astype(np.float16), list("abcd"), list("abcd"))
        st.write_annotation(sid, "blast_prob", np.full(4, 0.5, np.float32))
    st.close()
    reserved = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                *(f"LPT{i}" for i in range(1, 10))}
    attn = tmp_path / "attn"
    assert main([str(fit_run["out"]), "--store", str(tmp_path / "odd.h5"),
                 "--out", str(tmp_path / "p.csv"), "--attention", str(attn)]) == 0
    assert heatmap_main([str(fit_run["out"]), "--store", str(tmp_path / "odd.h5"),
                         "--out", str(tmp_path / "rep")]) == 0
    for names in ([p.stem for p in attn.iterdir()],
                  [p.name for p in (tmp_path / "rep").iterdir() if p.is_dir()]):
        assert len(names) == len(ids) and len({n.lower() for n in names}) == len(ids)
        assert not any(n.split(".")[0].upper() in reserved for n in names)
        assert "S07" in names  # names that cannot collide stay as they are
