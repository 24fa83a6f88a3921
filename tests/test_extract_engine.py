"""mil.extract --engine: compiled engines agree with PyTorch, cache reuse, provenance, int8."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_extract import TINY, make_cohort, run

from mil.errors import CliError
from mil.extract import engine as extract_engine
from mil.provenance import check_same_features
from mil.store import open_store

openvino = pytest.importorskip("openvino", reason="the [cpu] extra is not installed")


def features(path: Path) -> np.ndarray:
    with open_store(path) as st:
        return np.concatenate([st.features(s).astype(np.float32) for s in st.slides()])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("engine") / "cells", slides=3, cells=5)


@pytest.fixture(scope="module")
def torch_feats(cohort: Path) -> np.ndarray:
    out = cohort.parent / "torch.h5"
    assert run(cohort, out, *TINY, "--engine", "torch", "--dtype", "float32") == 0
    with open_store(out) as st:
        assert (st.attrs["engine"], st.attrs["precision"], st.attrs["feature_space"]) == (
            "torch", "32", "fp32")
    return features(out)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_engine_matches_torch_records_provenance_and_reuses_cache(
        tmp_path, cohort, torch_feats, monkeypatch, engine) -> None:
    pytest.importorskip(engine)
    out = tmp_path / "f.h5"
    # batch 4 over 15 cells: four batches in flight one after another through the thread
    assert run(cohort, out, *TINY, "--engine", engine, "--dtype", "float32",
               "--batch-size", "4") == 0
    assert cosine(features(out), torch_feats).min() >= 0.9999
    with open_store(out) as st:
        attrs = st.attrs
    assert attrs["engine"] == engine and attrs["precision"] == "32"
    assert attrs["feature_space"] == "fp32"  # agreed with torch at conversion: the same features
    assert attrs["engine_check"]["cosine_min"] >= 0.9999 and attrs["engine_check"]["check_cells"] == 15
    cached = list(extract_engine.cache_dir(out).iterdir())
    assert len(cached) == 1 and (cached[0] / "meta.json").is_file()
    # a resume (one slide more) reuses the converted model: no conversion may run
    make_cohort(tmp_path / "more", slides=1, cells=2, seed=1)
    (tmp_path / "more" / "slide0").rename(cohort / "slide_extra")
    try:
        monkeypatch.setattr(extract_engine, "convert", lambda *a: pytest.fail("converted again"))
        assert run(cohort, out, *TINY, "--engine", engine, "--dtype", "float32") == 0
    finally:
        for f in (cohort / "slide_extra").iterdir():
            f.unlink()
        (cohort / "slide_extra").rmdir()
    with open_store(out) as st:
        assert len(st.slides()) == 4


def test_overlap_off_gives_the_same_store(tmp_path, cohort) -> None:
    out = tmp_path / "f.h5"
    assert run(cohort, out, *TINY, "--engine", "openvino", "--batch-size", "2") == 0
    overlapped = features(out)
    out.unlink()  # the converted model stays cached beside it
    assert run(cohort, out, *TINY, "--engine", "openvino", "--batch-size", "7", "--no-overlap") == 0
    np.testing.assert_allclose(features(out), overlapped, atol=1e-3)


def test_disagreeing_engine_gets_a_feature_space_of_its_own(tmp_path, cohort, monkeypatch) -> None:
    monkeypatch.setattr(extract_engine, "AGREE", 1.01)  # no engine can agree that well
    out = tmp_path / "f.h5"
    assert run(cohort, out, *TINY, "--engine", "openvino") == 0
    with open_store(out) as st:
        assert st.attrs["feature_space"].startswith("openvino-fp32-")


@pytest.mark.slow
def test_int8_is_its_own_feature_space_and_is_refused_elsewhere(
        tmp_path, cohort, torch_feats, capsys) -> None:
    out = tmp_path / "int8.h5"
    assert run(cohort, out, *TINY, "--engine", "openvino", "--precision", "int8",
               "--calibration-cells", "12") == 0
    with open_store(out) as st:
        attrs = st.attrs
    assert attrs["precision"] == "int8" and attrs["feature_space"].startswith("openvino-int8-")
    assert attrs["engine_check"]["reference"] == "torch 32"
    assert cosine(features(out), torch_feats).min() > 0.5  # quantised, not garbage
    capsys.readouterr()
    # the fp32 engine may not append to an int8 store, nor a filter trained on int8 serve fp32
    assert run(cohort, out, *TINY, "--engine", "openvino") == 2
    assert "feature_space" in capsys.readouterr().err
    with pytest.raises(CliError, match="feature_space"):
        check_same_features({"feature_space": attrs["feature_space"]}, {"feature_space": "fp32"}, "s")


def test_auto_without_openvino_is_torch_with_a_note(tmp_path, cohort, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    out = tmp_path / "f.h5"
    assert run(cohort, out, *TINY) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "OpenVINO is not installed" in ln]
    assert len(notes) == 1 and ".[cpu]" in notes[0]
    with open_store(out) as st:
        assert st.attrs["engine"] == "torch"
    assert not extract_engine.cache_dir(out).exists()


def test_auto_is_openvino_on_the_cpu_and_torch_elsewhere() -> None:
    assert extract_engine.resolve_engine("auto", "cpu") == "openvino"
    assert extract_engine.resolve_engine("auto", "cuda") == "torch"
    assert extract_engine.resolve_engine("auto", "cpu", processes=2) == "torch"


@pytest.mark.parametrize("argv", [["--engine", "onnxruntime", "--precision", "int8"],
                                  ["--engine", "torch", "--precision", "int8"],
                                  ["--engine", "openvino", "--devices", "2"],
                                  ["--engine", "openvino", "--calibration-cells", "0"]])
def test_bad_engine_options_are_one_line(tmp_path, cohort, capsys, argv) -> None:
    assert run(cohort, tmp_path / "f.h5", *TINY, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mil.extract: error:")


def test_engine_not_installed_is_one_line(tmp_path, cohort, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert run(cohort, tmp_path / "f.h5", *TINY, "--engine", "onnxruntime") == 2
    assert '.[cpu]' in capsys.readouterr().err


@pytest.mark.slow
def test_int8_small_batches_run_and_match_large_ones(tmp_path, cohort) -> None:
    """Batches of 1-4 cells crashed OpenVINO's int8 CPU plugin (SIGSEGV); they are padded now.
    Run in a child process, so that a crash fails this test instead of ending the session."""
    import subprocess

    stores = {}
    for bs in (1, 8):
        stores[bs] = tmp_path / f"bs{bs}.h5"
        done = subprocess.run([sys.executable, "-m", "mil.extract", str(cohort), str(stores[bs]),
                               *TINY, "--engine", "openvino", "--precision", "int8",
                               "--calibration-cells", "12", "--batch-size", str(bs)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(features(stores[1]), features(stores[8]))


def test_int8_keeps_the_stem_convolution_in_fp32() -> None:
    """The first convolution is left out of quantisation (it set the worst cells' cosine)."""
    import torch

    from mil.extract.backbone import build_backbone

    bb = build_backbone("test_efficientnet", "none", 32)
    calib = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    model = extract_engine.openvino_model(bb, calib)

    def quantised(op) -> bool:  # int8 weights reach the convolution through a dequantising Multiply
        return op.input_value(1).get_node().get_type_name() != "Constant"

    convs = [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    assert len(convs) > 2 and not quantised(convs[0]) and quantised(convs[1])
