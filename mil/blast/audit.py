"""Expert audit of the blast filter: a stratified sample, a review sheet, a gallery, a score.

Sampling: every cell of the store is put in a stratum by its predicted class
(``blast_prob >= 0.5``); ``n`` cells are drawn without replacement, half from each stratum (the
rest from the other when one is short), uniformly over all cells of all slides. The whole-store
share of each predicted class is recorded in ``review.json`` beside ``review.csv``, because the
equal allocation over-represents the rarer class: the overall error rate is re-weighted by those
shares (:func:`score_review`).
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.blast.labels import parse_label
from mil.errors import CliError
from mil.stats import stratified_proportion, wilson_interval
from mil.store import BLAST_PROB, open_store
from mil.store.images import image_root
from mil.store.schema import now
from mil.tables import read_rows, row_error

log = logging.getLogger("mil.blast")

BLAST, NONBLAST = "blast", "non-blast"
SHEET_COLUMNS = ("row", "slide_id", "cell_id", "path", "predicted", "blast_prob", "expert")


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


def stratified_sample(probs: list[np.ndarray], n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(slide index, cell index) pairs: ``n`` cells, half per predicted class, seeded.

    ``probs[i]`` holds the blast probabilities (N_i,) of slide i. The two strata are
    interleaved in a seeded random order, so a sheet is not read class by class.
    """
    if not probs:
        return []
    slide_idx = np.concatenate([np.full(len(p), i) for i, p in enumerate(probs)])  # (M,)
    cell_idx = np.concatenate([np.arange(len(p)) for p in probs])  # (M,)
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


def write_sheet(out: Path, cells: list[SampledCell], meta: dict[str, Any]) -> Path:
    """``review.csv`` (empty ``expert`` column) and its sidecar ``review.json``."""
    out.mkdir(parents=True, exist_ok=True)
    sheet = out / "review.csv"
    with sheet.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(SHEET_COLUMNS)
        for c in cells:
            w.writerow([c.row, c.slide_id, c.cell_id, c.path, c.predicted,
                        f"{c.blast_prob:.6f}", ""])
    (out / "review.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return sheet


# -- gallery -----------------------------------------------------------------------------------
def _thumb(path: Path | None, size: int) -> tuple[Any, bool]:
    """(RGB thumbnail, found); a missing or unreadable image gives a marked placeholder."""
    from PIL import Image, ImageDraw

    if path is not None:
        try:
            with Image.open(path) as src:
                im = src.convert("RGB")
                im.thumbnail((size, size))
                tile = Image.new("RGB", (size, size), "white")
                tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
                return tile, True
        except (OSError, ValueError):
            pass
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    d = ImageDraw.Draw(tile)
    d.line([(0, 0), (size, size)], fill=(200, 0, 0), width=3)
    d.line([(0, size), (size, 0)], fill=(200, 0, 0), width=3)
    d.text((4, size // 2 - 6), "MISSING", fill=(120, 0, 0))
    return tile, False


def write_gallery(out: Path, cells: list[SampledCell], root: Path | None, *,
                  thumb: int = 96, cols: int = 8, rows: int = 6) -> dict[str, int]:
    """Per-cell thumbnails, PNG contact sheets and an offline ``index.html`` in ``out``."""
    from PIL import Image, ImageDraw

    (out / "cells").mkdir(parents=True, exist_ok=True)
    found = missing = 0
    tiles = []
    for c in cells:
        path = None if root is None and not Path(c.path).is_absolute() else \
            (root / c.path if root is not None else Path(c.path))
        tile, ok = _thumb(path, thumb)
        found, missing = found + ok, missing + (not ok)
        tile.save(out / "cells" / f"{c.row:05d}.png")
        tiles.append(tile)
    cap, per = 14, cols * rows
    sheets = 0
    for start in range(0, len(cells), per):
        chunk = cells[start : start + per]
        sheet = Image.new("RGB", (cols * thumb, math.ceil(len(chunk) / cols) * (thumb + cap)),
                          "white")
        draw = ImageDraw.Draw(sheet)
        for i, c in enumerate(chunk):
            x, y = (i % cols) * thumb, (i // cols) * (thumb + cap)
            sheet.paste(tiles[start + i], (x, y))
            colour = (180, 0, 0) if c.predicted == BLAST else (0, 0, 160)
            draw.text((x + 2, y + thumb + 1), f"#{c.row} {c.predicted}", fill=colour)
        sheets += 1
        sheet.save(out / f"sheet_{sheets:03d}.png")
    (out / "index.html").write_text(gallery_html(cells), encoding="utf-8")
    return {"found": found, "missing": missing, "sheets": sheets}


def gallery_html(cells: list[SampledCell]) -> str:
    """A self-contained page (no scripts, fonts or remote files); every data string escaped."""
    e = html.escape
    items = "\n".join(
        f'<figure class="{e(c.predicted)}"><img src="cells/{c.row:05d}.png" alt="row {c.row}">'
        f"<figcaption><b>#{c.row}</b> {e(c.predicted)} ({c.blast_prob:.2f})<br>"
        f"{e(c.slide_id)} / {e(c.cell_id)}</figcaption></figure>"
        for c in cells)
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>blast filter audit"
            "</title>\n<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;"
            "width:120px;font-size:11px;vertical-align:top}figure.blast b{color:#b00}"
            "figure.non-blast b{color:#00a}img{width:96px;height:96px}</style></head><body>\n"
            "<h1>Blast filter audit</h1><p>Fill the <code>expert</code> column of review.csv "
            "(blast / non-blast) for each row number shown here.</p>\n" + items +
            "\n</body></html>\n")


# -- scoring -----------------------------------------------------------------------------------
def read_review(sheet: Path) -> tuple[list[tuple[int, int]], int]:
    """([(predicted, expert)] as 0/1, number of rows skipped for an empty expert cell)."""
    pairs, skipped = [], 0
    for row_no, row in read_rows(sheet, ("predicted", "expert"), what="review sheet"):
        if not row["expert"]:
            skipped += 1
            continue
        pred, exp = parse_label(row["predicted"]), parse_label(row["expert"])
        for name, val in (("predicted", pred), ("expert", exp)):
            if val is None:
                raise row_error(sheet, row_no, f"unknown {name} value {row[name]!r} "
                                               "(expected blast/non-blast or 1/0)")
        pairs.append((int(pred), int(exp)))  # type: ignore[arg-type]
    return pairs, skipped


def score_review(sheet: Path) -> dict[str, Any]:
    """Error rates of the filter from a filled review sheet, with Wilson 95% intervals.

    ``error_rate`` is the whole-store error: the per-stratum error rates weighted by the
    predicted-class shares of the store (from ``review.json``); its interval is Wilson's at the
    stratified design's effective sample size (:func:`mil.stats.stratified_proportion`).
    """
    if not sheet.is_file():
        raise CliError(f"review sheet not found: {sheet}")
    side = sheet.with_suffix(".json")
    if not side.is_file():
        raise CliError(f"{side} not found: it holds the predicted-class shares needed to "
                       "re-weight the stratified sample (written by 'audit STORE')")
    shares = json.loads(side.read_text(encoding="utf-8")).get("predicted_share", {})
    if not {BLAST, NONBLAST} <= set(shares):
        raise CliError(f"{side}: lacks predicted_share for {BLAST} and {NONBLAST}")
    pairs, skipped = read_review(sheet)
    if not pairs:
        raise CliError(f"{sheet}: no row has an expert label ({skipped} empty)")
    out: dict[str, Any] = {}
    rates, sizes = [], []
    for name, cls in ((BLAST, 1), (NONBLAST, 0)):
        errs = [p != x for p, x in pairs if p == cls]
        k, n = sum(errs), len(errs)
        key = name.replace("-", "")
        out[f"{key}_error_rate"] = k / n if n else None
        out[f"{key}_ci"] = list(wilson_interval(k, n))
        out[f"n_{key}"] = n
        rates.append(k / n if n else 0.0)
        sizes.append(n)
    est, ci, n_eff = stratified_proportion(rates, sizes, [shares[BLAST], shares[NONBLAST]])
    raw_k = sum(p != x for p, x in pairs)
    return {"error_rate": est, "ci": list(ci), "n": len(pairs), "n_effective": n_eff,
            **out, "unweighted_error_rate": raw_k / len(pairs),
            "unweighted_ci": list(wilson_interval(raw_k, len(pairs))),
            "predicted_share": shares, "skipped_empty": skipped, "sheet": str(sheet),
            "note": "error_rate: estimated fraction of cells whose predicted class is wrong, "
                    "over the whole store (stratified sample re-weighted); use as the noise rate"}


# -- audit -------------------------------------------------------------------------------------
def audit(store_path: str, n: int, out: Path, seed: int = 0, source: str | None = None) -> Path:
    """Sample ``n`` cells stratified by predicted class; write review.csv(+.json) and gallery."""
    if n < 1:
        raise CliError(f"--n must be at least 1, got {n}")
    with open_store(store_path, "r") as store:
        slides = store.slides()
        lacking = [s for s in slides if BLAST_PROB not in store.annotations(s)]
        if lacking or not slides:
            raise CliError(f"{len(lacking)} of {len(slides)} slide(s) of {store_path} lack "
                           f"{BLAST_PROB}; run 'python -m mil.blast predict' first")
        probs = [np.asarray(store.annotation(s, BLAST_PROB), dtype=np.float64) for s in slides]
        shas = sorted({str(store.annotation_attrs(s, BLAST_PROB).get("filter_sha256"))
                       for s in slides})
        picks = stratified_sample(probs, n, seed)
        cache: dict[int, tuple[list[str], list[str]]] = {}
        cells = []
        for row, (si, ci) in enumerate(picks, start=1):
            if si not in cache:
                cache[si] = (store.strings(slides[si], "cell_ids"), store.strings(slides[si], "paths"))
            cells.append(SampledCell(row, slides[si], cache[si][0][ci], cache[si][1][ci],
                                     float(probs[si][ci])))
        root = image_root(store.attrs, source, store_path)
    flat = np.concatenate(probs)
    n_blast = int((flat >= 0.5).sum())
    meta: dict[str, Any] = {"store": str(store_path), "seed": seed, "n_requested": n, "n_sampled": len(cells),
            "n_cells": int(flat.size), "predicted_count": {BLAST: n_blast, NONBLAST: int(flat.size) - n_blast},
            "predicted_share": {BLAST: n_blast / flat.size, NONBLAST: 1 - n_blast / flat.size},
            "sampled_count": {BLAST: sum(c.predicted == BLAST for c in cells),
                              NONBLAST: sum(c.predicted == NONBLAST for c in cells)},
            "filter_sha256": shas, "source_root": str(root) if root else None, "created": now(),
            "design": "stratified by predicted class (blast_prob >= 0.5), equal allocation"}
    sheet = write_sheet(out, cells, meta)
    g = write_gallery(out, cells, root)
    log.info("%d cells sampled (%d predicted blast) -> %s; gallery: %d sheet(s), %d image(s) "
             "missing", len(cells), meta["sampled_count"][BLAST], sheet, g["sheets"], g["missing"])
    return sheet


def score(sheet: Path, out: str | None = None) -> dict[str, Any]:
    """Score a filled review sheet and write the noise-rate JSON."""
    result = score_review(sheet)
    dest = Path(out) if out else sheet.with_name("noise.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if result["skipped_empty"]:
        log.warning("warning: %d row(s) without an expert label skipped", result["skipped_empty"])
    log.info("error rate %.3f [%.3f, %.3f] from %d reviewed cells -> %s", result["error_rate"],
             *result["ci"], result["n"], dest)
    return result
