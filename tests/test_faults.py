"""Fault injection: damaged stores, kill -9 mid-overwrite, two writers, read-only folders,
corrupt checkpoints. Every fault must end in one line naming what is wrong, never in data that
reads as healthy, a traceback or half an output."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mil.errors import CliError
from mil.store import BLAST_PROB, encode_key, open_store
from mil.store import cli as store_cli
from mil.store.info import info_text
from tests.conftest import error_line, make_store, write_labels

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny_filter(path: Path, store: Path, seed: int = 0) -> str:
    """An (untrained) blast filter for the store's features; returns its sha256."""
    from mil.blast.model import BlastClassifier, save_filter
    from mil.provenance import feature_provenance

    torch.manual_seed(seed)
    attrs = open_store(store).attrs
    return save_filter(path, BlastClassifier(int(attrs["feature_dim"])), temperature=1.0,
                       provenance=feature_provenance(attrs), metrics={}, config={}, created="t")


# -- damaged stores -----------------------------------------------------------------------------
def test_zarr_deleted_chunks_are_refused_and_verified(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.zarr"
    make_store(path, slides=4, blast_prob=True).close()
    assert store_cli.main(["verify", str(path)]) == 0
    assert "4 of 4 slides healthy" in capsys.readouterr().out
    slides = path / "slides"
    for sid, name in (("S01", "features"), ("S02", BLAST_PROB), ("S03", "cell_ids")):
        for chunk in (slides / encode_key(sid) / name / "c").rglob("*"):
            if chunk.is_file():
                chunk.unlink()
    assert store_cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "bad slide 'S01': features: 1 chunk(s) missing" in out
    assert "bad slide 'S02'" in out and "bad slide 'S03'" in out and "'S00'" not in out
    assert "1 of 4 slides healthy" in out
    assert "3 bad slide(s)" in info_text(path)  # info says it from metadata alone
    st = open_store(path)
    for read in (lambda: st.features("S01"), lambda: st.annotation("S02", BLAST_PROB),
                 lambda: st.strings("S03", "cell_ids")):
        with pytest.raises(CliError, match="is damaged .*chunk"):
            read()
    assert st.read("S00").features.shape == (6, 8)


def test_hdf5_flipped_bytes_fail_loudly(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.h5"
    make_store(path, slides=3).close()
    with h5py.File(path, "r") as f:
        ds = f[f"slides/{encode_key('S01')}/features"]
        assert ds.fletcher32
        offset = ds.id.get_chunk_info(0).byte_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 7] ^= 0x5A
    path.write_bytes(bytes(raw))
    assert store_cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "bad slide 'S01': features" in out and "2 of 3 slides healthy" in out
    with pytest.raises(CliError, match="slide 'S01': features is damaged"):
        open_store(path).features("S01")


def test_old_stores_without_checksums_still_read(tmp_path: Path, monkeypatch, capsys) -> None:
    import mil.store.backends as backends

    monkeypatch.setattr(backends, "H5_CHECKSUM", {})  # as cellmil wrote before fletcher32
    make_store(tmp_path / "old.h5", slides=2).close()
    monkeypatch.undo()
    with h5py.File(tmp_path / "old.h5", "r") as f:
        assert not f[f"slides/{encode_key('S00')}/features"].fletcher32
    assert open_store(tmp_path / "old.h5").features("S00").shape == (6, 8)
    assert store_cli.main(["verify", str(tmp_path / "old.h5")]) == 0
    assert "without checksums" in capsys.readouterr().out
    assert "checksums   none on" in info_text(tmp_path / "old.h5")


def test_non_finite_features_are_refused_by_every_reader(fit_run, tmp_path: Path, capsys) -> None:
    from mil.fit import main as fit_main
    from mil.predict import main as predict_main

    path = tmp_path / "nan.h5"
    st = make_store(path, slides=8, blast_prob=True)
    feats = st.features("S02").astype(np.float32)
    feats[1, 3] = np.nan  # what random bytes in an unchecksummed chunk become
    st.write_slide("S02", feats.astype(np.float16), st.strings("S02", "cell_ids"),
                   st.strings("S02", "paths"))
    st.write_annotation("S02", BLAST_PROB, np.full(6, 0.5, np.float32))
    st.close()
    labels = write_labels(tmp_path / "labels.csv", [f"S{i:02d}" for i in range(8)])
    assert fit_main([str(path), "--labels", str(labels), "--out", str(tmp_path / "run"),
                     "--folds", "2", "--epochs", "1", "--no-progress"]) == 2
    assert "slide 'S02': features is damaged (1 non-finite value(s))" in error_line(capsys)
    assert predict_main([str(fit_run["out"]), "--store", str(path), "--slides", "S02",
                         "--out", str(tmp_path / "p.csv")]) == 2
    assert "slide 'S02': features is damaged" in error_line(capsys)
    assert not (tmp_path / "p.csv").exists()
    assert store_cli.main(["verify", str(path)]) == 1
    assert "bad slide 'S02': features: 1 non-finite value(s)" in capsys.readouterr().out


# -- kill -9 during blast predict --overwrite ------------------------------------------------------
_SLOW_BLAST = """
import sys, time
import mil.store.bagstore as b
write = b.BagStore.write_annotation
def slow(self, *a, **k):
    write(self, *a, **k)
    time.sleep(0.4)
b.BagStore.write_annotation = slow
from mil.blast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _filters(store: Path) -> list[str]:
    out = []
    for meta in sorted((store / "slides").glob(f"*/{BLAST_PROB}/zarr.json")):
        out.append(json.loads(meta.read_text())["attributes"]["filter_sha256"])
    return out


@pytest.mark.slow
def test_kill_9_during_blast_overwrite_is_refused_by_fit_and_predict(fit_run, tmp_path, capsys):
    from mil.blast.cli import main as blast_main
    from mil.fit import main as fit_main
    from mil.predict import main as predict_main

    store = tmp_path / "s.zarr"
    make_store(store, slides=6).close()
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    sha_a, sha_b = tiny_filter(first, store, seed=0), tiny_filter(second, store, seed=1)
    assert blast_main(["predict", str(store), "--filter", str(first)]) == 0
    assert _filters(store) == [sha_a] * 6
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BLAST, "predict", str(store),
                             "--filter", str(second), "--overwrite"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while _filters(store).count(sha_b) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    mixed = _filters(store)
    assert 1 <= mixed.count(sha_b) < 6 and len(mixed) == 6, "not killed half-way"
    labels = write_labels(tmp_path / "labels.csv", [f"S{i:02d}" for i in range(6)])
    capsys.readouterr()
    assert fit_main([str(store), "--labels", str(labels), "--out", str(tmp_path / "run"),
                     "--instance-weights", "prior", "--folds", "2", "--epochs", "1",
                     "--no-progress"]) == 2
    err = error_line(capsys)
    assert f"{BLAST_PROB} comes from 2 blast filters" in err and sha_b[:12] in err
    assert not (tmp_path / "run" / "fold_0").exists()
    assert predict_main([str(fit_run["out"]), "--store", str(store),
                         "--out", str(tmp_path / "p.csv")]) == 2
    assert "comes from 2 blast filters" in error_line(capsys)
    assert blast_main(["predict", str(store), "--filter", str(second), "--overwrite"]) == 0
    assert _filters(store) == [sha_b] * 6  # the way out the message names


# -- two writers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def held_open(path: Path, mode: str = "a"):
    """Another process holding ``path`` open (for writing by default) until the block ends."""
    code = ("import sys, time; from mil.store import open_store; s = open_store(sys.argv[1], "
            f"{mode!r}); s.attrs; print('open', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "open"
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_concurrent_writers_are_refused(tmp_path: Path, capsys) -> None:
    from mil.extract.cli import main as extract_main
    from tests.test_extract import TINY, make_cohort

    src = make_cohort(tmp_path / "cells", slides=2, cells=2)
    zarr_store, h5_store = tmp_path / "s.zarr", tmp_path / "s.h5"
    assert extract_main([str(src), str(zarr_store), *TINY]) == 0
    make_store(h5_store, slides=1).close()
    capsys.readouterr()
    with held_open(zarr_store):
        assert extract_main([str(src), str(zarr_store), *TINY]) == 2
        err = error_line(capsys)
        assert f"another process is writing {zarr_store}" in err
        assert open_store(zarr_store).slides() == ["slide0", "slide1"]  # readers are welcome
    with open_store(zarr_store, "a") as st:  # the lock died with its holder
        st.delete_slide("slide1")
    with held_open(h5_store), pytest.raises(CliError, match=re.escape(
            f"another process is writing {h5_store}")):
        open_store(h5_store).slides()


# -- read-only folders ----------------------------------------------------------------------------
@pytest.fixture
def readable_dir():
    """A folder other users can read (tmp_path is private to root), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="cellmil-ro-"))
    base.chmod(0o755)
    yield base
    for p in base.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(base)


@contextlib.contextmanager
def without_write_access():
    """Run as a user the read-only folder applies to: root ignores permission bits."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


CASES = ["extract", "blast-fit", "blast-predict", "blast-audit", "review", "fit", "predict",
         "heatmap", "convert"]


@pytest.mark.parametrize("case", CASES)
def test_read_only_folders_fail_before_the_work(case, fit_run, readable_dir, monkeypatch, capsys):
    from mil.blast.cli import main as blast_main
    from mil.extract.cli import main as extract_main
    from mil.fit import main as fit_main
    from mil.heatmap import main as heatmap_main
    from mil.predict import main as predict_main
    from mil.review.cli import main as review_main
    from tests.test_extract import TINY, make_cohort

    base = readable_dir
    ro = base / "ro"
    ro.mkdir()
    store = base / "s.h5"
    shutil.copy(fit_run["store"], store)
    run = base / "run"
    shutil.copytree(fit_run["out"], run)
    (base / "cells.csv").write_text("slide_id,cell_id,label\nS00,c000,blast\nS01,c001,0\n")

    def never(*a, **k):
        raise AssertionError("the work started before the output was checked")

    if case == "blast-fit":
        monkeypatch.setattr("mil.blast.train.cross_validate", never)
    if case == "predict":
        monkeypatch.setattr("mil.train.ensemble.run_models", never)
    if case == "blast-predict":
        make_store(ro / "s.zarr", slides=2).close()
        tiny_filter(base / "f.pt", ro / "s.zarr")
    if case == "extract":
        make_cohort(base / "cells", slides=1, cells=2)
    if case == "review":
        assert blast_main(["audit", str(store), "--n", "4", "--out", str(ro / "audit")]) == 0
    calls = {
        "extract": lambda: extract_main([str(base / "cells"), str(ro / "f.h5"), *TINY]),
        "blast-fit": lambda: blast_main(["fit", str(store), "--labels", str(base / "cells.csv"),
                                         "--out", str(ro / "f.pt")]),
        "blast-predict": lambda: blast_main(["predict", str(ro / "s.zarr"),
                                             "--filter", str(base / "f.pt")]),
        "blast-audit": lambda: blast_main(["audit", str(store), "--out", str(ro / "audit")]),
        "fit": lambda: fit_main([str(store), "--labels", str(base / "labels.csv"),
                                 "--out", str(ro / "run")]),
        "predict": lambda: predict_main([str(run), "--store", str(store),
                                         "--out", str(ro / "p.csv")]),
        "heatmap": lambda: heatmap_main([str(run), "--store", str(store), "--out", str(ro / "rep")]),
        "convert": lambda: store_cli.main(["convert", str(store), str(ro / "s.zarr")]),
        "review": lambda: review_main([str(ro / "audit"), "--rater", "ann", "--port", "0"]),
    }
    shutil.copy(fit_run["labels"], base / "labels.csv")
    # the commands' bodies are imported first: the interpreter's own files may be root's only
    for module in ("mil.extract.pipeline", "mil.blast.train", "mil.blast.annotate",
                   "mil.blast.audit", "mil.train.crossval", "mil.train.predict",
                   "mil.explain.run", "mil.store.convert", "mil.review.app", "werkzeug.serving"):
        importlib.import_module(module)
    for p in [ro, *ro.rglob("*")]:  # the folder and whatever it holds
        p.chmod(0o555 if p.is_dir() else 0o444)
    capsys.readouterr()
    with without_write_access():
        rc = calls[case]()
    assert rc == 2
    err = error_line(capsys)
    assert "not writable" in err and str(ro) in err, err


# -- corrupt checkpoints, whole-or-nothing reports --------------------------------------------------
@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line_and_heatmap_leaves_nothing(fit_run, tmp_path, capsys):
    from mil.heatmap import main as heatmap_main
    from mil.predict import main as predict_main

    run = tmp_path / "run"
    shutil.copytree(fit_run["out"], run)
    bad = run / "fold_1" / "best.ckpt"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated, e.g. a disk that filled up
    out = tmp_path / "report"
    assert heatmap_main([str(run), "--out", str(out)]) == 2
    err = error_line(capsys)
    assert str(bad) in err and "not a readable cellmil checkpoint" in err
    assert not out.exists()  # fold 0's slides were exported, then taken back
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert heatmap_main([str(run), "--out", str(out)]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 1.0}}, bad)
    assert predict_main([str(run), "--out", str(tmp_path / "p.csv"), "--models", "folds"]) == 2
    err = error_line(capsys)
    assert str(bad) in err and "not a readable cellmil checkpoint" in err
