"""Tiny synthetic fixtures, built by keyword-only factories into ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mil.store import BagStore, open_store


def make_store(
    path: Path,
    *,
    slides: int = 4,
    cells: int | tuple[int, int] = 6,
    dim: int = 8,
    seed: int = 0,
    dtype: str = "float16",
    coords: bool = False,
    blast_prob: bool = False,
    prefix: str = "S",
    attrs: dict | None = None,
) -> BagStore:
    """A bag store with random features; ``cells`` may be a (low, high) range per slide;
    ``attrs`` adds or replaces root attributes (e.g. preprocessing)."""
    rng = np.random.default_rng(seed)
    st = open_store(path, "a")
    st.init({"backbone": "test", "feature_dim": dim, "dtype": dtype, "image_size": 32,
             "weights": {"source": "none", "sha256": None}, "weights_sha256": "none",
             **(attrs or {})})
    for i in range(slides):
        n = cells if isinstance(cells, int) else int(rng.integers(cells[0], cells[1] + 1))
        feats = rng.normal(size=(n, dim)).astype(dtype)
        ids = [f"c{j:03d}" for j in range(n)]
        xy = rng.uniform(0, 100, size=(n, 2)).astype(np.float32) if coords else None
        sid = f"{prefix}{i:02d}"
        st.write_slide(sid, feats, ids, [f"{sid}/{c}.png" for c in ids], coords=xy)
        if blast_prob:
            st.write_annotation(sid, "blast_prob", rng.uniform(size=n).astype(np.float32))
    return st


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line a CLI wrote to stderr (warnings logged on the way may precede it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "Traceback" not in "".join(lines), lines
    assert sum(": error: " in line for line in lines) == 1 and ": error: " in lines[-1], lines
    return lines[-1]


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny models: threads only contend), then restored."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["h5", "zarr"])
def store_suffix(request: pytest.FixtureRequest) -> str:
    """Run a test once per backend."""
    return request.param


def write_labels(path: Path, slide_ids: list[str], *, classes: str = "AB",
                 patients: bool = True) -> Path:
    """``slide_id,label[,patient_id]`` with labels cycling over ``classes``."""
    lines = ["slide_id,label" + (",patient_id" if patients else "")]
    for i, sid in enumerate(slide_ids):
        lines.append(f"{sid},{classes[i % len(classes)]}" + (f",P{i}" if patients else ""))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_labelled_store(path: Path, *, slides: int = 12, dim: int = 8, seed: int = 0,
                        classes: str = "AB", shift: float = 1.5) -> tuple[BagStore, Path]:
    """A store whose features carry the class (a shift of the first dims on a share of cells,
    the ones with a high blast_prob), and its labels CSV ``labels.csv`` beside it."""
    rng = np.random.default_rng(seed)
    st = make_store(path, slides=slides, cells=(4, 10), dim=dim, seed=seed, blast_prob=True)
    sids = st.slides()
    st.close()
    st = open_store(path, "a")
    for i, sid in enumerate(sids):
        feats = st.features(sid).astype(np.float32)
        blast = rng.uniform(size=len(feats)) < 0.5
        feats[blast, i % len(classes)] += shift
        st.write_slide(sid, feats.astype(np.float16), st.strings(sid, "cell_ids"),
                       st.strings(sid, "paths"))
        prob = np.where(blast, 0.9, 0.1).astype(np.float32)
        st.write_annotation(sid, "blast_prob", prob)
    labels = write_labels(path.parent / "labels.csv", sids, classes=classes)
    return st, labels


@pytest.fixture(scope="session")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny finished ``mil.fit`` run (3 folds, 2 epochs, prior weights, 2 final models),
    shared by tests."""
    import torch

    from mil.fit import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fit_run")
    st, labels = make_labelled_store(root / "s.h5")
    st.close()
    out = root / "run"
    argv = [str(root / "s.h5"), "--labels", str(labels), "--out", str(out), "--folds", "3",
            "--epochs", "2", "--batch-size", "4", "--hidden", "8", "--attn-hidden", "4",
            "--instance-weights", "prior", "--noise-rate", "0.1", "--no-progress",
            "--final-seeds", "2"]
    assert main(argv) == 0
    torch.set_num_threads(threads)  # later tests (extraction) compare runs at the default count
    return {"root": root, "store": root / "s.h5", "labels": labels, "out": out, "argv": argv}
