"""What a resume checks: extraction compares each slide's input fingerprint and the source
folder; mil.fit compares the labels, the split file and the labelled slides it started with.
Stored paths resolve from the artefacts, not from the folder a command ran in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.fit import main as fit
from mil.store import open_store
from mil.store.images import image_root
from mil.train.rundir import RunDir
from tests.conftest import error_line, make_labelled_store
from tests.test_extract import TINY, make_cohort
from tests.test_extract import run as extract


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _written(store: Path) -> dict[str, tuple]:
    """slide -> (write stamp, cells, input fingerprint)."""
    with open_store(store) as st:
        return {s: (st.slide_attrs(s)["written"], st.n_cells(s),
                    st.slide_attrs(s)["inputs_sha256"]) for s in st.slides()}


# -- extraction -----------------------------------------------------------------------------------
def test_extract_resume_re_extracts_changed_slides(tmp_path: Path, capsys) -> None:
    src = make_cohort(tmp_path / "cells", slides=3, cells=3)
    out = tmp_path / "f.zarr"
    assert extract(str(src), str(out), *TINY) == 0
    before = _written(out)
    with open_store(out) as st:
        assert all(len(st.slide_attrs(s)["inputs_sha256"]) == 64 for s in st.slides())
    shutil.copy(src / "slide0" / "cell0.jpg", src / "slide1" / "added.jpg")  # cells added
    (src / "slide2" / "cell1.jpg").unlink()  # and removed
    capsys.readouterr()
    assert extract(str(src), str(out), *TINY) == 0
    line = capsys.readouterr().out
    assert "re-extracted 2 slides whose images changed: slide1, slide2" in line
    assert "1 slide already complete" in line
    after = _written(out)
    assert after["slide0"] == before["slide0"] and after["slide1"] != before["slide1"]
    with open_store(out) as st:
        assert st.n_cells("slide1") == 4 and st.n_cells("slide2") == 2
        assert "added" in st.strings("slide1", "cell_ids")
    assert extract(str(src), str(out), *TINY) == 0
    assert "3 slides already complete" in capsys.readouterr().out
    assert _written(out) == after


def test_extract_refuses_another_cohort_with_the_same_slide_ids(tmp_path: Path, capsys) -> None:
    first = make_cohort(tmp_path / "a", slides=2, cells=2, seed=0)
    second = make_cohort(tmp_path / "b", slides=2, cells=2, seed=1)  # slide0, slide1 again
    out = tmp_path / "f.h5"
    assert extract(str(first), str(out), *TINY) == 0
    capsys.readouterr()
    assert extract(str(second), str(out), *TINY) == 2
    err = error_line(capsys)
    assert f"extracted from {first.resolve()}" in err and "--overwrite" in err
    before = _written(out)
    assert extract(str(second), str(out), *TINY, "--overwrite") == 0
    after = _written(out)
    assert sorted(after) == ["slide0", "slide1"]
    assert all(after[s][2] != before[s][2] for s in after)  # the second cohort's slides
    with open_store(out) as st:
        assert st.attrs["source_root"] == str(second.resolve())


def test_stored_paths_resolve_from_anywhere(tmp_path: Path, monkeypatch) -> None:
    make_cohort(tmp_path / "work" / "cells", slides=1, cells=2)
    monkeypatch.chdir(tmp_path / "work")
    assert extract("cells", "f.h5", *TINY) == 0  # relative paths, as users type them
    monkeypatch.chdir(tmp_path)
    with open_store(tmp_path / "work" / "f.h5") as st:
        root = image_root(st.attrs, None, st.path)
        assert root == (tmp_path / "work" / "cells").resolve() and root.is_absolute()
        assert all((root / p).is_file() for p in st.strings("slide0", "paths"))


# -- mil.fit ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, fit_run) -> dict[str, Path]:
    """A finished 3-fold run started from relative paths, with a split file."""
    root = tmp_path_factory.mktemp("small_run")
    make_labelled_store(root / "s.h5", seed=3)[0].close()
    shutil.copy(fit_run["out"] / "splits.json", root / "splits.json")  # the same 12 slide ids
    argv = ["s.h5", "--labels", "labels.csv", "--out", "run", "--split-file", "splits.json",
            "--epochs", "1", "--batch-size", "4", "--hidden", "8", "--attn-hidden", "4",
            "--no-progress"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert fit(argv) == 0
    finally:
        os.chdir(cwd)
    return {"root": root, "argv": argv}


def _rerun(small_run: dict, tmp_path: Path) -> Path:
    """A copy of the run and its inputs in ``tmp_path`` (the current folder)."""
    for name in ("s.h5", "labels.csv", "splits.json", "run"):
        src = small_run["root"] / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    return tmp_path


def test_fit_resume_refuses_changed_inputs(small_run, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(_rerun(small_run, tmp_path))
    assert (tmp_path / "run" / "inputs.json").is_file()
    assert fit(small_run["argv"]) == 0  # same inputs: every fold reused
    labels = (tmp_path / "labels.csv").read_text()
    (tmp_path / "labels.csv").write_text(labels.replace("S00,A", "S00,B"))
    capsys.readouterr()
    assert fit(small_run["argv"]) == 2
    err = error_line(capsys)
    assert "started with other inputs: the labels file" in err and "labels.csv changed" in err
    (tmp_path / "labels.csv").write_text(labels)
    splits = (tmp_path / "splits.json").read_text()
    (tmp_path / "splits.json").write_text(splits.replace('"k": 3', '"k":  3'))
    assert fit(small_run["argv"]) == 2
    assert "the split file" in error_line(capsys)
    (tmp_path / "splits.json").write_text(splits)
    with open_store(tmp_path / "s.h5", "a") as st:  # a labelled slide re-extracted meanwhile
        st.write_slide("S04", np.zeros((3, 8), np.float16), ["a", "b", "c"], ["a", "b", "c"])
    assert fit(small_run["argv"]) == 2
    assert "the labelled slides of the store" in error_line(capsys)


def test_run_folder_finds_its_store_from_anywhere(small_run, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # not where mil.fit ran
    run = RunDir(small_run["root"] / "run")
    assert run.store.is_absolute() and run.store == (small_run["root"] / "s.h5").resolve()
    assert run.is_own_store(small_run["root"] / "s.h5")
