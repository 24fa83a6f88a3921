import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mil.errors import CliError
from mil.store import SCHEMA, decode_key, encode_key, open_store
from mil.store import cli as store_mod
from mil.store.convert import convert, import_h5dir
from mil.store.info import info_text
from tests.conftest import make_store


def _same(a, b) -> None:
    assert a.slides() == b.slides()
    for sid in a.slides():
        x, y = a.read(sid), b.read(sid)
        np.testing.assert_array_equal(x.features, y.features)
        assert x.features.dtype == y.features.dtype
        assert (x.cell_ids, x.paths) == (y.cell_ids, y.paths)
        assert (x.coords is None) == (y.coords is None)
        if x.coords is not None:
            np.testing.assert_array_equal(x.coords, y.coords)
        assert x.annotations.keys() == y.annotations.keys()
        for k in x.annotations:
            np.testing.assert_array_equal(x.annotations[k], y.annotations[k])
        assert a.strings(sid, "failed") == b.strings(sid, "failed")


def test_round_trip(tmp_path: Path, store_suffix: str) -> None:
    path = tmp_path / f"s.{store_suffix}"
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(7, 5)).astype(np.float16)
    ids = [f"cell {i}/é" for i in range(7)]
    with open_store(path, "a") as st:
        st.init({"backbone": "b", "feature_dim": 5, "dtype": "float16",
                 "config": {"nested": [1, 2]}})
        st.write_slide("slide/one", feats, ids, [f"p{i}.jpg" for i in range(7)],
                       coords=np.arange(14).reshape(7, 2), failed=["bad.jpg"], attrs={"x": 3})
    st = open_store(path)
    bag = st.read("slide/one")
    np.testing.assert_array_equal(bag.features, feats)
    assert bag.features.dtype == np.float16
    assert bag.cell_ids == ids and bag.paths[3] == "p3.jpg"
    np.testing.assert_array_equal(bag.coords, np.arange(14).reshape(7, 2).astype(np.float32))
    assert st.strings("slide/one", "failed") == ["bad.jpg"]
    attrs = st.slide_attrs("slide/one")
    assert (attrs["n_cells"], attrs["n_failed"], attrs["x"]) == (7, 1, 3)
    assert st.attrs["schema"] == SCHEMA and st.attrs["config"] == {"nested": [1, 2]}
    rows = np.array([5, 0, 3])
    np.testing.assert_array_equal(st.features("slide/one", rows), feats[rows])


def test_annotation_beside_features(tmp_path: Path, store_suffix: str) -> None:
    st = make_store(tmp_path / f"s.{store_suffix}", slides=2, cells=5)
    before = st.features("S00").copy()
    st.write_annotation("S00", "blast_prob", np.linspace(0, 1, 5, dtype=np.float32), {"filter": "a"})
    st.write_annotation("S00", "blast_prob", np.full(5, 0.5, np.float32), {"filter": "b"})
    st.close()
    ro = open_store(st.path)
    assert ro.annotations("S00") == ["blast_prob"] and ro.annotation("S01", "blast_prob") is None
    np.testing.assert_array_equal(ro.annotation("S00", "blast_prob"), np.full(5, 0.5))
    assert ro.annotation_attrs("S00", "blast_prob")["filter"] == "b"
    np.testing.assert_array_equal(ro.features("S00"), before)
    ro.close()
    rw = open_store(st.path, "a")
    with pytest.raises(ValueError):
        rw.write_annotation("S00", "blast_prob", np.zeros(4))
    with pytest.raises(ValueError):
        rw.write_annotation("S00", "features", np.zeros(5))


slide_ids = st.text(min_size=1, max_size=300).filter(lambda s: "\x00" not in s)


@given(slide_ids)
@settings(max_examples=300, deadline=None)
def test_key_encoding_round_trip(sid: str) -> None:
    key = encode_key(sid)
    assert len(key) <= 180
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-%~ABCDEF" for c in key)
    escapes = [key[i + 1 : i + 3] for i, c in enumerate(key) if c == "%"]
    plain = "".join(c for i, c in enumerate(key) if not any(key[j] == "%" and j < i <= j + 2
                                                                for j in range(max(0, i - 2), i)))
    assert all(len(e) == 2 for e in escapes) and not any(c.isupper() for c in plain)
    if "~" not in key:
        assert decode_key(key) == sid
    assert encode_key(sid) == key


def test_keys_are_case_safe_and_distinct() -> None:
    assert encode_key("Slide") != encode_key("slide")
    assert encode_key("Slide").lower() != encode_key("slide").lower()
    long_a, long_b = "x" * 400 + "a", "x" * 400 + "b"
    assert encode_key(long_a) != encode_key(long_b)


@pytest.mark.parametrize("sid", ["a/b", "..", "../../etc", "with space", "ünïcødé 细胞", "L" * 500])
def test_odd_slide_ids_round_trip(tmp_path: Path, store_suffix: str, sid: str) -> None:
    path = tmp_path / f"s.{store_suffix}"
    with open_store(path, "a") as s:
        s.init({"backbone": "b"})
        s.write_slide(sid, np.ones((2, 3), np.float16), ["a", "b"], ["1", "2"])
    assert open_store(path).slides() == [sid]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing escaped the store


def test_schema_refusal(tmp_path: Path, store_suffix: str) -> None:
    path = tmp_path / f"s.{store_suffix}"
    st = make_store(path, slides=1)
    st.close()
    for bad, msg in [("cellmil.bagstore/99", "newer"), ("other.thing/1", "unknown store schema")]:
        raw = type(st._b)(path, True)
        raw.set_root_attrs({"schema": bad})
        raw.close()
        with pytest.raises(CliError, match=msg):
            open_store(path)
        with pytest.raises(CliError, match=msg):
            open_store(path, "a")
    plain = tmp_path / "plain.h5"
    h5py.File(plain, "w").close()
    with pytest.raises(CliError, match="not a cellmil bag store"):
        open_store(plain)
    with pytest.raises(CliError, match="must end in"):
        open_store(tmp_path / "x.npz", "a")
    with pytest.raises(CliError, match="not found"):
        open_store(tmp_path / "missing.h5")


def test_incompatible_init_refused(tmp_path: Path, store_suffix: str) -> None:
    st = make_store(tmp_path / f"s.{store_suffix}", slides=2)
    with pytest.raises(CliError, match="backbone"):
        st.init({"backbone": "other", "feature_dim": 8})
    st.init({"backbone": "other", "feature_dim": 8}, overwrite=True)
    assert st.slides() == [] and st.attrs["backbone"] == "other"


class _Crash(Exception):
    pass


@pytest.mark.parametrize("where", ["create", "move"])
def test_crash_mid_write_leaves_slide_absent(tmp_path: Path, store_suffix: str,
                                             monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / f"s.{store_suffix}"
    st = make_store(path, slides=2)
    backend = type(st._b)
    if where == "create":
        orig = backend._create
        calls = {"n": 0}

        def boom(self, grp, name, data):  # crash after the features were written
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Crash
            return orig(self, grp, name, data)

        monkeypatch.setattr(backend, "_create", boom)
    else:
        target = "move" if store_suffix == "h5" else "replace"
        if store_suffix == "h5":
            monkeypatch.setattr(h5py.File, "move", lambda *a, **k: (_ for _ in ()).throw(_Crash()))
        else:
            import mil.store.backends as sb

            monkeypatch.setattr(sb.os, target, lambda *a, **k: (_ for _ in ()).throw(_Crash()))
    with pytest.raises(_Crash):
        st.write_slide("NEW", np.ones((3, 8), np.float16), ["a", "b", "c"], ["1", "2", "3"])
    monkeypatch.undo()
    if store_suffix == "h5":
        st.close()
    ro = open_store(path)
    assert ro.slides() == ["S00", "S01"]
    ro.close()
    rw = open_store(path, "a")  # reopening for append cleans the debris
    rw.write_slide("NEW", np.ones((3, 8), np.float16), ["a", "b", "c"], ["1", "2", "3"])
    assert rw.slides() == ["NEW", "S00", "S01"]


_KILL_SCRIPT = """
import os, sys, numpy as np
from mil.store import open_store
st = open_store(sys.argv[1], "a")
st.init({"backbone": "b", "feature_dim": 64})
st.write_slide("done", np.ones((10, 64), np.float16), [str(i) for i in range(10)], ["p"] * 10)
import mil.store.backends as sb, mil.store.zarr_backend as zb
orig = sb.H5Backend._create if sys.argv[1].endswith(".h5") else zb.ZarrBackend._create
def dying(self, grp, name, data):
    out = orig(self, grp, name, data)
    if name == "paths":
        os._exit(9)   # like kill -9: no cleanup, no flush
    return out
sb.H5Backend._create = zb.ZarrBackend._create = dying
st.write_slide("half", np.ones((1000, 64), np.float16), [str(i) for i in range(1000)], ["p"] * 1000)
"""


def test_hard_kill_mid_write(tmp_path: Path, store_suffix: str) -> None:
    path = tmp_path / f"s.{store_suffix}"
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(path)], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    assert open_store(path).slides() == ["done"]
    assert open_store(path).read("done").features.shape == (10, 64)


def _read_in_worker(path: str) -> float:
    st = open_store(path)
    return float(sum(st.features(s).astype(np.float32).sum() for s in st.slides()))


def test_dataloader_workers_read_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    make_store(path, slides=6, cells=5).close()
    st = open_store(path)
    expected = {s: st.features(s).astype(np.float32) for s in st.slides()}  # opens in the parent

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int):
            sid = st.slides()[i]
            return sid, os.getpid(), torch.from_numpy(st.features(sid).astype(np.float32))

    loader = torch.utils.data.DataLoader(DS(), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    pids = set()
    for sid, pid, feats in loader:
        np.testing.assert_array_equal(feats.numpy(), expected[sid])
        pids.add(pid)
    assert len(pids) == 2 and os.getpid() not in pids
    with mp.get_context("spawn").Pool(1) as pool:  # a pickled store reopens in a fresh process
        assert pool.apply(_read_in_worker, (str(path),)) == pytest.approx(
            sum(v.sum() for v in expected.values()), rel=1e-5)


@pytest.mark.parametrize(("src", "dst"), [("h5", "zarr"), ("zarr", "h5")])
def test_convert_lossless(tmp_path: Path, src: str, dst: str) -> None:
    a = make_store(tmp_path / f"a.{src}", slides=3, cells=(2, 9), coords=True, blast_prob=True)
    a.close()
    assert convert(a.path, tmp_path / f"b.{dst}") == 3
    b = open_store(tmp_path / f"b.{dst}")
    _same(open_store(a.path), b)
    assert b.attrs["backbone"] == "test" and b.attrs["feature_dim"] == 8
    with pytest.raises(CliError, match="exists"):
        convert(a.path, tmp_path / f"b.{dst}")
    assert convert(a.path, tmp_path / f"b.{dst}", overwrite=True) == 3


def test_import_clam_trident_dir(tmp_path: Path) -> None:
    src = tmp_path / "clam" / "h5_files"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with h5py.File(src / "slide_a.h5", "w") as h:
        h["features"] = rng.normal(size=(5, 4)).astype(np.float32)
        h["coords"] = np.arange(10).reshape(5, 2)
    with h5py.File(src / "slide_b.h5", "w") as h:
        h["features"] = rng.normal(size=(1, 3, 4)).astype(np.float32)  # TRIDENT-style batch dim
    n = import_h5dir(tmp_path / "clam", tmp_path / "out.zarr", backbone="uni")
    st = open_store(tmp_path / "out.zarr")
    assert n == 2 and st.slides() == ["slide_a", "slide_b"]
    assert st.read("slide_a").coords.shape == (5, 2) and st.read("slide_b").coords is None
    assert st.features("slide_b").shape == (3, 4) and st.attrs["backbone"] == "uni"
    with h5py.File(src / "slide_c.h5", "w") as h:
        h["features"] = np.zeros((2, 7), np.float32)
    with pytest.raises(CliError, match="slide_c.h5 has feature dim 7"):
        import_h5dir(tmp_path / "clam", tmp_path / "out2.h5")


def test_cli_info_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = make_store(tmp_path / "s.h5", slides=3, cells=4)
    st.write_slide("S09", np.ones((2, 8), np.float16), ["a", "b"], ["x", "y"], failed=["broken.jpg"])
    st.close()
    assert store_mod.main(["info", str(tmp_path / "s.h5")]) == 0
    out = capsys.readouterr().out
    assert "slides      4" in out and "cells       14" in out and "broken.jpg" in out
    assert "test" in out and "feature dim 8" in out
    assert store_mod.main(["convert", str(tmp_path / "s.h5"), str(tmp_path / "s.zarr")]) == 0
    assert "slides      4" in info_text(tmp_path / "s.zarr")
    assert store_mod.main(["info", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.h5" in err


@pytest.mark.parametrize("sid", ["S003", "a/b", "..", "../../etc", ".hidden", "ünï cødé", "L" * 300])
def test_file_name_is_safe_and_readable(sid: str) -> None:
    from mil.store import file_name

    name = file_name(sid)
    assert "/" not in name and not name.startswith(".") and len(name) <= 120
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    if sid == "S003":
        assert name == "S003"
    else:
        assert name != file_name(sid + "x")


def test_file_names_are_distinct_without_case_and_not_reserved() -> None:
    from mil.store import file_names

    ids = ["Case", "case", "CASE", "CON", "con.txt", "Lpt9", "slide.", "S01", "x/y", "X/y"]
    names = file_names(ids)
    assert len({n.lower() for n in names.values()}) == len(ids)
    reserved = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                *(f"LPT{i}" for i in range(1, 10))}
    assert not any(n.split(".")[0].upper() in reserved or n.endswith(".") for n in names.values())
    assert names["S01"] == "S01" and names["Case"].startswith("Case-")  # readable, then a hash
    assert file_names(["Case"]) == {"Case": "Case"}  # alone, nothing collides
