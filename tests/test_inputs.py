"""Inputs that used to pass without a word: classes without slides, external cohorts checked
only after training, manifests whose files do not exist, empty and unsupported slide folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mil.fit import main as fit
from mil.store import open_store
from tests.conftest import error_line, make_store, write_labels
from tests.test_extract import TINY, make_cohort
from tests.test_extract import run as extract


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# -- mil.fit ----------------------------------------------------------------------------------------
def test_fit_refuses_a_class_without_slides(tmp_path: Path, capsys) -> None:
    make_store(tmp_path / "s.h5", slides=6).close()
    labels = write_labels(tmp_path / "l.csv", [f"S{i:02d}" for i in range(6)], classes="AB")
    assert fit([str(tmp_path / "s.h5"), "--labels", str(labels), "--out", str(tmp_path / "run"),
                "--classes", "A,B,C", "--folds", "2", "--epochs", "1", "--no-progress"]) == 2
    assert "no slide has class(es) C of --classes" in error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_fit_checks_the_external_cohort_before_training(tmp_path: Path, capsys) -> None:
    make_store(tmp_path / "s.h5", slides=6).close()
    make_store(tmp_path / "ext.h5", slides=2, dim=5, prefix="E").close()
    labels = write_labels(tmp_path / "l.csv", [f"S{i:02d}" for i in range(6)])
    ext = write_labels(tmp_path / "ext.csv", ["E00", "E01"])
    base = [str(tmp_path / "s.h5"), "--labels", str(labels), "--out", str(tmp_path / "run"),
            "--folds", "2", "--epochs", "1", "--no-progress"]
    assert fit([*base, "--test-store", str(tmp_path / "ext.h5"), "--test-labels", str(ext)]) == 2
    assert "feature_dim 5 differs from the training store" in error_line(capsys)
    assert not (tmp_path / "run").exists()  # no fold was trained first
    assert fit([*base, "--test-store", str(tmp_path / "ext.h5")]) == 2
    assert "--test-store needs --test-labels" in error_line(capsys)


# -- mil.extract ------------------------------------------------------------------------------------
def test_manifest_without_any_existing_file_fails(tmp_path: Path, capsys) -> None:
    (tmp_path / "m.csv").write_text("slide_id,path\na,cells/x.jpg\nb,cells/y.jpg\n")
    assert extract(str(tmp_path / "m.csv"), str(tmp_path / "m.h5"), *TINY) == 2
    err = error_line(capsys)
    assert "none of the 2 image files exists" in err and str(tmp_path / "cells" / "x.jpg") in err
    assert not (tmp_path / "m.h5").exists()


def test_missing_and_unreadable_images_are_told_apart(tmp_path: Path, capsys) -> None:
    make_cohort(tmp_path / "cells", slides=1, cells=2)
    (tmp_path / "cells" / "slide0" / "bad.jpg").write_bytes(b"\xff\xd8\xffjunk")
    rows = ["slide_id,path", "s,cells/slide0/cell0.jpg", "s,cells/slide0/cell1.jpg",
            "s,cells/slide0/bad.jpg", "s,cells/slide0/gone.jpg", "t,cells/slide0/bad.jpg"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert extract(str(tmp_path / "m.csv"), str(tmp_path / "m.h5"), *TINY) == 0
    line = capsys.readouterr().out
    assert "(3 failed)" in line and "failed images: 1 missing, 2 unreadable" in line
    with open_store(tmp_path / "m.h5") as st:
        assert st.slides() == ["s"]
        failed = dict(zip(st.strings("s", "failed"), st.strings("s", "failed_reason"), strict=True))
        assert failed == {"cells/slide0/bad.jpg": "unreadable", "cells/slide0/gone.jpg": "missing"}
        assert st.attrs["left_out"] == {"t": "every image failed: 1 unreadable"}
    (tmp_path / "all_bad.csv").write_text("slide_id,path\nt,cells/slide0/bad.jpg\n")
    assert extract(str(tmp_path / "all_bad.csv"), str(tmp_path / "bad.h5"), *TINY) == 2
    assert "nothing could be extracted: 0 image file(s) missing, 1 unreadable" in error_line(capsys)


def test_extract_summary_lists_empty_folders_and_unsupported_files(tmp_path: Path, capsys) -> None:
    src = make_cohort(tmp_path / "cells", slides=1, cells=2)
    (src / "empty").mkdir()
    (src / "gifs").mkdir()
    Image.new("RGB", (8, 8)).save(src / "gifs" / "a.gif")
    (src / "slide0" / "notes.txt").write_text("not a cell")
    assert extract(str(src), str(tmp_path / "f.h5"), *TINY) == 0
    line = capsys.readouterr().out
    assert "2 slide folders without images: empty, gifs" in line
    assert "2 files of unsupported type skipped (.gif x1, .txt x1; e.g. gifs/a.gif)" in line
    with open_store(tmp_path / "f.h5") as st:
        assert st.attrs["left_out"] == {"empty": "no cell images in its folder",
                                        "gifs": "no cell images in its folder"}
