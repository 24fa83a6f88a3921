"""A tiny multi-label bag store: each positive target shifts its own feature dim on some cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mil.store import BagStore, open_store
from tests.conftest import make_store

TARGETS = ["NPM1", "FLT3", "CEBPA"]


def panel_rows(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) labels in {0, 1} with NPM1 ~ 40%, FLT3 ~ 35% (mostly with NPM1), CEBPA ~ 30%."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 3))
    y[rng.permutation(n)[: round(0.4 * n)], 0] = 1
    npm1 = np.flatnonzero(y[:, 0] == 1)
    y[npm1[: round(0.7 * len(npm1))], 1] = 1
    y[np.flatnonzero(y[:, 0] == 0)[:2], 1] = 1
    y[rng.permutation(n)[: round(0.3 * n)], 2] = 1
    return y


def make_panel_store(path: Path, *, slides: int = 15, dim: int = 8, seed: int = 0,
                     unknown: list[tuple[int, int]] = ()) -> tuple[BagStore, Path, np.ndarray]:
    """(store, labels CSV ``panel.csv`` beside it, labels (n, 3) with NaN at ``unknown``)."""
    rng = np.random.default_rng(seed)
    st = make_store(path, slides=slides, cells=(5, 10), dim=dim, seed=seed, blast_prob=True)
    sids = st.slides()
    st.close()
    st = open_store(path, "a")
    y = panel_rows(slides, seed)
    for i, sid in enumerate(sids):
        feats = st.features(sid).astype(np.float32)
        for j in np.flatnonzero(y[i]):
            cue = rng.uniform(size=len(feats)) < 0.5
            feats[cue, j] += 2.0
        st.write_slide(sid, feats.astype(np.float16), st.strings(sid, "cell_ids"),
                       st.strings(sid, "paths"))
        st.write_annotation(sid, "blast_prob", rng.uniform(0.3, 1, len(feats)).astype(np.float32))
    y = y.copy()
    for i, j in unknown:
        y[i, j] = np.nan
    lines = ["slide_id,patient_id," + ",".join(TARGETS)]
    for i, sid in enumerate(sids):
        vals = ["" if np.isnan(v) else str(int(v)) for v in y[i]]
        lines.append(f"{sid},P{i},{','.join(vals)}")
    labels = path.parent / "panel.csv"
    labels.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return st, labels, y
