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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError
from mil.stats import stratified_proportion, wilson_interval

BLAST, NONBLAST = "blast", "non-blast"
SHEET_COLUMNS = ("row", "slide_id", "cell_id", "path", "predicted", "blast_prob", "expert")
LABEL_VALUES = {"blast": 1, "1": 1, "non-blast": 0, "nonblast": 0, "non_blast": 0, "0": 0}


def parse_label(value: str) -> int | None:
    """1 (blast), 0 (non-blast) or None for an unknown value; case- and space-insensitive."""
    return LABEL_VALUES.get(value.strip().lower())


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
    if not sheet.is_file():
        raise CliError(f"review sheet not found: {sheet}")
    pairs, skipped = [], 0
    with sheet.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"predicted", "expert"} - {c.strip() for c in reader.fieldnames or []}
        if missing:
            raise CliError(f"{sheet}: lacks column(s) {', '.join(sorted(missing))}")
        for row_no, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            if not row["expert"]:
                skipped += 1
                continue
            pred, exp = parse_label(row["predicted"]), parse_label(row["expert"])
            for name, val in (("predicted", pred), ("expert", exp)):
                if val is None:
                    raise CliError(f"{sheet}, row {row_no}: unknown {name} value "
                                   f"{row[name]!r} (expected blast/non-blast or 1/0)")
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
