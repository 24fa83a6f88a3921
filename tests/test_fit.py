"""Tests for python -m mil.fit: outputs, resume, determinism, one-line CLI errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from mil.fit import main
from mil.train.splits import check_no_leak, load_splits
from tests.conftest import make_store, write_labels


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_outputs_exist_with_the_right_columns(fit_run):
    out = fit_run["out"]
    for name in ("config.yaml", "splits.json", "predictions.csv", "metrics.json"):
        assert (out / name).is_file(), name
    for k in range(3):
        assert (out / f"fold_{k}" / "best.ckpt").is_file()
        assert (out / f"fold_{k}" / "logs" / "metrics.csv").is_file()
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", "truth", "prediction", "prob_A", "prob_B"]
    assert len(rows) == 12 and len({r["slide_id"] for r in rows}) == 12  # out-of-fold, once each
    assert all(abs(float(r["prob_A"]) + float(r["prob_B"]) - 1) < 1e-4 for r in rows)
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == ["A", "B"] and len(m["folds"]) == 3
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
        assert set(m["mean_sd"][key]) == {"mean", "sd"}
        lo, hi = m["pooled"]["ci95"][key]
        assert lo <= m["pooled"][key] <= hi
    assert set(m["pooled"]["auroc_per_class"]) == {"A", "B"}
    assert sum(map(sum, m["pooled"]["confusion"])) == 12


def test_splits_are_saved_and_leak_free(fit_run):
    folds, meta = load_splits(fit_run["out"] / "splits.json")
    assert len(folds) == 3 and meta["seed"] == 0
    with fit_run["labels"].open() as fh:
        patient_of = {r["slide_id"]: r["patient_id"] for r in csv.DictReader(fh)}
    check_no_leak(folds, patient_of)
    assert sorted(s for f in folds for s in f.test) == sorted(patient_of)


def test_resume_skips_finished_folds(fit_run, tmp_path: Path, capsys):
    out = tmp_path / "run"
    shutil.copytree(fit_run["out"], out)
    argv = [*fit_run["argv"][:3], "--out", str(out), *fit_run["argv"][5:]]
    stamps = {k: (out / f"fold_{k}" / "best.ckpt").stat().st_mtime_ns for k in range(3)}
    (out / "fold_1" / "metrics.json").unlink()  # fold 1 "crashed" before finishing
    assert main(argv) == 0
    now = {k: (out / f"fold_{k}" / "best.ckpt").stat().st_mtime_ns for k in range(3)}
    assert now[0] == stamps[0] and now[2] == stamps[2] and now[1] != stamps[1]
    assert (out / "fold_1" / "metrics.json").is_file()
    capsys.readouterr()
    assert main([*argv, "--epochs", "3"]) == 2  # other settings: refused, never mixed
    assert "other settings (epochs)" in capsys.readouterr().err


def test_same_seed_same_metrics(fit_run, tmp_path: Path):
    argv = [*fit_run["argv"][:3], "--out", str(tmp_path / "again"), *fit_run["argv"][5:]]
    assert main(argv) == 0
    a = json.loads((fit_run["out"] / "metrics.json").read_text())
    b = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert a == b
    assert (fit_run["out"] / "predictions.csv").read_text() == \
        (tmp_path / "again" / "predictions.csv").read_text()


def _err(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("mil.fit: error:")
    return err


def test_cli_errors_are_one_line(tmp_path: Path, capsys):
    st = make_store(tmp_path / "s.h5", slides=6)
    sids = st.slides()
    st.close()
    base = [str(tmp_path / "s.h5"), "--out", str(tmp_path / "run"), "--no-progress"]
    lab = tmp_path / "l.csv"
    lab.write_text("slide_id,class\nS00,A\n")
    assert "missing column(s) label" in _err([*base, "--labels", str(lab)], capsys)
    write_labels(lab, sids, classes="AAAAB")  # class B: one patient
    assert "class 'B' has 1 patient" in _err([*base, "--labels", str(lab), "--folds", "2"], capsys)
    write_labels(lab, [*sids, "ghost"], classes="AB")
    assert "not in the store: ghost" in _err([*base, "--labels", str(lab)], capsys)
    write_labels(lab, sids, classes="ABC")
    assert "row 4: class 'C'" in _err([*base, "--labels", str(lab), "--classes", "A,B"], capsys)
    write_labels(lab, sids, classes="AB")
    err = _err([*base, "--labels", str(lab), "--folds", "2", "--instance-weights", "filter"], capsys)
    assert "slide 'S00' has no 'blast_prob'" in err
    assert "--noise-rate" in _err([*base, "--labels", str(lab), "--noise-rate", "0.7"], capsys)


def test_external_cohort_with_the_fold_ensemble(fit_run, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(fit_run["out"], out)
    ext = write_labels(tmp_path / "ext.csv", ["S01", "S04", "S07"], classes="BAB")
    argv = [*fit_run["argv"][:3], "--out", str(out), *fit_run["argv"][5:], "--test-labels", str(ext)]
    assert main(argv) == 0  # folds are reused; only the ensemble runs
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    assert [r["slide_id"] for r in rows] == ["S01", "S04", "S07"]
    assert [r["truth"] for r in rows] == ["B", "A", "B"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["external"]["n_slides"] == 3


@pytest.mark.parametrize(("accelerator", "stream", "tuned"),
                         [("cpu", False, True), ("cpu", True, False), ("gpu", False, False)])
def test_cpu_training_keeps_freed_buffers_on_the_heap(tmp_path: Path, monkeypatch, accelerator,
                                                       stream, tuned):
    """On the CPU with the bags in RAM, mil.fit raises glibc's mmap threshold before training
    (no page faults per batch); streaming or elsewhere it leaves the allocator alone."""
    from mil.train import crossval
    from mil.train.config import FitConfig
    from tests.conftest import make_labelled_store

    calls = []
    monkeypatch.setattr(crossval, "keep_freed_memory", lambda: calls.append(1) or True)

    class Source:
        def __init__(self, *a, stream=False, **k):
            self.streaming = stream

    def stop(*a, **k):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(crossval, "BagSource", Source)
    monkeypatch.setattr(crossval, "_run_fold", stop)
    st, labels = make_labelled_store(tmp_path / "s.h5")
    st.close()
    cfg = FitConfig(store=tmp_path / "s.h5", labels=labels, out=tmp_path / "run",
                    accelerator=accelerator, folds=3, stream=stream)
    with pytest.raises(RuntimeError, match="stop before training"):
        crossval.fit(cfg)
    assert calls == ([1] if tuned else [])
