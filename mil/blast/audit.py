"""Expert audit of the blast filter: a sample, a blinded review sheet and its key, a gallery.

Strategies (``--strategy``):

- ``stratified`` (default, the one that gives an unbiased error rate): every cell of the store
  is put in a stratum by its predicted class (``blast_prob >= 0.5``); ``n`` cells are drawn
  without replacement, half from each stratum (the rest from the other when one is short),
  uniformly over all cells of all slides. The whole-store share of each predicted class is
  recorded in ``review.json``, because the equal allocation over-represents the rarer class:
  the error rate is re-weighted by those shares (:mod:`mil.blast.score`).
- ``uncertain``: the ``n`` cells whose probability is nearest 0.5 (where a review changes most).
- ``suspects``: the first ``n`` cells of confident learning's list (``mil.blast noise``, :mod:`mil.blast.noise`).

The sheet is blinded: ``review.csv`` and the gallery show no call and no probability; the
filter's calls go to ``key.csv``, which scoring joins. File names: :mod:`mil.blast.folder`; pictures: :mod:`mil.blast.gallery`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.blast.folder import (
    BLAST,
    KEY,
    KEY_COLUMNS,
    META,
    NONBLAST,
    REVIEW,
    SHEET_COLUMNS,
    count_answers,
)
from mil.blast.gallery import write_gallery
from mil.errors import CliError
from mil.store import BLAST_PROB, BagStore, open_store
from mil.store.images import image_root
from mil.store.schema import now
from mil.tables import read_rows

log = logging.getLogger("mil.blast")
STRATEGIES = ("stratified", "uncertain", "suspects")


@dataclass(frozen=True)
class SampledCell:
    row: int
    slide_id: str
    cell_id: str
    path: str
    blast_prob: float

    @property
    def predicted(self) -> str:
        return BLAST if self.blast_prob >= 0.5 else NONBLAST


def _flat_index(probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(slide index (M,), cell index (M,)) of the M cells of all slides, in order."""
    slide_idx = np.concatenate([np.full(len(p), i) for i, p in enumerate(probs)])  # (M,)
    cell_idx = np.concatenate([np.arange(len(p)) for p in probs])  # (M,)
    return slide_idx, cell_idx


def stratified_sample(probs: list[np.ndarray], n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(slide index, cell index) pairs: ``n`` cells, half per predicted class, seeded.

    ``probs[i]`` holds the blast probabilities (N_i,) of slide i. The two strata are
    interleaved in a seeded random order, so a sheet is not read class by class.
    """
    if not probs:
        return []
    slide_idx, cell_idx = _flat_index(probs)
    flat = np.concatenate(probs)  # (M,)
    strata = [np.flatnonzero(flat >= 0.5), np.flatnonzero(flat < 0.5)]
    n_blast = min(n - n // 2, len(strata[0]))
    n_non = min(n - n_blast, len(strata[1]))
    want = [min(n - n_non, len(strata[0])), n_non]  # a short stratum's rest goes to the other
    rng = np.random.default_rng(seed)
    picks = []
    for h in (0, 1):
        chosen = rng.choice(strata[h], size=want[h], replace=False)
        picks += [(int(slide_idx[j]), int(cell_idx[j])) for j in chosen]
    return [picks[i] for i in rng.permutation(len(picks))]


def uncertain_sample(probs: list[np.ndarray], n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(slide index, cell index) of the ``n`` cells nearest p = 0.5, in a seeded random order
    (ties in distance broken at random)."""
    if not probs:
        return []
    slide_idx, cell_idx = _flat_index(probs)
    dist = np.abs(np.concatenate(probs) - 0.5)  # (M,)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(dist.size), dist))[:n]
    order = order[rng.permutation(len(order))]
    return [(int(slide_idx[j]), int(cell_idx[j])) for j in order]


def suspect_sample(suspects: Path, slides: list[str], cell_ids: dict[str, dict[str, int]],
                   n: int, seed: int = 0) -> list[tuple[int, int]]:
    """The first ``n`` cells of a ``suspects.csv`` (most likely mislabelled first) that are in
    the store, as (slide index, cell index), in a seeded random order."""
    slide_no = {s: i for i, s in enumerate(slides)}
    picks = []
    for _, row in read_rows(suspects, ("slide_id", "cell_id"), what="suspects list"):
        sid, cid = row["slide_id"], row["cell_id"]
        if sid in slide_no and cid in cell_ids[sid]:
            picks.append((slide_no[sid], cell_ids[sid][cid]))
        if len(picks) == n:
            break
    if not picks:
        raise CliError(f"{suspects}: none of its cells is in the store")
    rng = np.random.default_rng(seed)
    return [picks[i] for i in rng.permutation(len(picks))]


def neighbour_rows(n_cells: int, cell: int, coords: np.ndarray | None, k: int) -> list[int]:
    """Up to ``k`` other cells of the slide shown beside ``cell``: the nearest by ``coords``
    (N, 2) when the store has them, else the cells next to it in the slide's order."""
    if coords is not None:
        d = ((np.asarray(coords, np.float64) - coords[cell]) ** 2).sum(axis=1)  # (N,)
        d[cell] = np.inf
        return [int(j) for j in np.argsort(d, kind="stable")[: min(k, n_cells - 1)]]
    steps = [s for i in range(1, n_cells) for s in (cell - i, cell + i)]
    return [j for j in steps if 0 <= j < n_cells][:k]


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[Any]]) -> None:
    """Write a CSV atomically (temporary file, then ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def refuse_answered(out: Path) -> None:
    """A one-line CliError when ``out`` already holds expert answers (nothing is overwritten)."""
    found = count_answers(out)
    if found:
        path, n = found[0]
        more = f" (and {len(found) - 1} more answer file(s))" if len(found) > 1 else ""
        raise CliError(f"{path} holds {n} expert answer(s){more}; an audit is never written "
                       "over answers: choose another --out")


def write_sheet(out: Path, cells: list[SampledCell], meta: dict[str, Any]) -> Path:
    """Blinded ``review.csv`` (empty ``expert`` column), its key ``key.csv`` and ``review.json``."""
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / KEY, KEY_COLUMNS, [[c.row, c.slide_id, c.cell_id, c.predicted,
                                         f"{c.blast_prob:.6f}"] for c in cells])
    (out / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    sheet = out / REVIEW
    _write_csv(sheet, SHEET_COLUMNS, [[c.row, c.slide_id, c.cell_id, c.path, ""] for c in cells])
    return sheet


# -- audit -------------------------------------------------------------------------------------
def _draw(strategy: str, probs: list[np.ndarray], n: int, seed: int, suspects: str | None,
          store: BagStore, slides: list[str]) -> list[tuple[int, int]]:
    """(slide index, cell index) of the sampled cells, by ``strategy``."""
    if strategy not in STRATEGIES:
        raise CliError(f"unknown --strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
    if strategy == "suspects":
        if not suspects:
            raise CliError("--strategy suspects needs --suspects suspects.csv "
                           "(written by 'python -m mil.blast noise')")
        ids = {s: {c: i for i, c in enumerate(store.strings(s, "cell_ids"))} for s in slides}
        return suspect_sample(Path(suspects), slides, ids, n, seed)
    return (uncertain_sample if strategy == "uncertain" else stratified_sample)(probs, n, seed)


def audit(store_path: str, n: int, out: Path, seed: int = 0, source: str | None = None,
          strategy: str = "stratified", suspects: str | None = None,
          neighbours: int = 6) -> Path:
    """Sample ``n`` cells; write the blinded review.csv, key.csv, review.json and the gallery.

    Refuses (before writing anything) a folder that already holds expert answers."""
    if n < 1:
        raise CliError(f"--n must be at least 1, got {n}")
    refuse_answered(out)
    with open_store(store_path, "r") as store:
        slides = store.slides()
        lacking = [s for s in slides if BLAST_PROB not in store.annotations(s)]
        if lacking or not slides:
            raise CliError(f"{len(lacking)} of {len(slides)} slide(s) of {store_path} lack "
                           f"{BLAST_PROB}; run 'python -m mil.blast predict' first")
        probs = [np.asarray(store.annotation(s, BLAST_PROB), dtype=np.float64) for s in slides]
        shas = sorted({str(store.annotation_attrs(s, BLAST_PROB).get("filter_sha256"))
                       for s in slides})
        picks = _draw(strategy, probs, n, seed, suspects, store, slides)
        cache: dict[int, tuple[list[str], list[str], np.ndarray | None]] = {}
        cells, near = [], {}
        for row, (si, ci) in enumerate(picks, start=1):
            if si not in cache:
                cache[si] = (store.strings(slides[si], "cell_ids"),
                             store.strings(slides[si], "paths"), store.coords(slides[si]))
            ids, paths, xy = cache[si]
            cells.append(SampledCell(row, slides[si], ids[ci], paths[ci], float(probs[si][ci])))
            near[row] = [paths[j] for j in neighbour_rows(len(ids), ci, xy, neighbours)]
        root = image_root(store.attrs, source, store_path)
    flat = np.concatenate(probs)
    n_blast = int((flat >= 0.5).sum())
    design = {"stratified": "stratified by predicted class (blast_prob >= 0.5), equal allocation",
              "uncertain": "the cells nearest blast_prob = 0.5 (not a random sample)",
              "suspects": f"confident learning's suspects from {suspects} (not a random sample)"}
    meta: dict[str, Any] = {"store": str(store_path), "seed": seed, "n_requested": n, "n_sampled": len(cells),
            "n_cells": int(flat.size), "predicted_count": {BLAST: n_blast, NONBLAST: int(flat.size) - n_blast},
            "predicted_share": {BLAST: n_blast / flat.size, NONBLAST: 1 - n_blast / flat.size},
            "sampled_count": {BLAST: sum(c.predicted == BLAST for c in cells),
                              NONBLAST: sum(c.predicted == NONBLAST for c in cells)},
            "filter_sha256": shas, "source_root": str(root) if root else None, "created": now(),
            "strategy": strategy, "design": design[strategy], "blinded": True}
    sheet = write_sheet(out, cells, meta)
    g = write_gallery(out, cells, root, neighbours=near)
    log.info("%d cells sampled (%s, %d predicted blast) -> %s (key: key.csv); gallery: %d "
             "sheet(s), %d image(s) missing", len(cells), strategy, meta["sampled_count"][BLAST],
             sheet, g["sheets"], g["missing"])
    return sheet
