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
) -> BagStore:
    """A bag store with random features; ``cells`` may be a (low, high) range per slide."""
    rng = np.random.default_rng(seed)
    st = open_store(path, "a")
    st.init({"backbone": "test", "feature_dim": dim, "dtype": dtype, "image_size": 32,
             "weights": {"source": "none", "sha256": None}, "weights_sha256": "none"})
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


@pytest.fixture(params=["h5", "zarr"])
def store_suffix(request: pytest.FixtureRequest) -> str:
    """Run a test once per backend."""
    return request.param
