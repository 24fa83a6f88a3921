"""Attention export of one slide: attention.csv, gallery.png, mosaic.png, map.png, thumb.png.

Each slide gets ``DIR/<file_name(slide_id)>/`` (safe for any id: ``../../x`` stays inside DIR).
The core, :func:`export_slide`, takes plain arrays, so it is usable without a trained run; the
colour scales are :data:`mil.explain.attention.NORMS`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError
from mil.explain import render
from mil.explain.attention import NORMS, SlideAttention, normalise_attention, percentiles, ranks
from mil.store import file_name

log = logging.getLogger("mil.heatmap")


@dataclass
class SlideExport:
    """What was written for one slide (one row of the index)."""

    slide_id: str
    folder: str
    truth: str | None
    prediction: str
    probability: float
    n_cells: int
    n_missing: int
    files: dict[str, str] = field(default_factory=dict)  # kind -> file name in the folder
    models: str = ""  # which models explained the slide


def slide_folder(out: Path, slide_id: str, name: str | None = None) -> Path:
    """``out/<safe name>`` (``name``: one of :func:`mil.store.file_names`), a direct child of ``out``."""
    name = name or file_name(slide_id)
    if name in (".", "..") or "/" in name or "\\" in name:  # cannot happen; belt and braces
        raise CliError(f"slide id {slide_id!r} cannot be made a safe folder name")
    return out / name


def write_table(path: Path, sa: SlideAttention, explained: np.ndarray, ok: np.ndarray) -> None:
    """attention.csv: one row per cell in store order."""
    multi = sa.attention.shape[1] > 1
    head = ["cell_id", "path", "attention"]
    head += [f"attention_{c}" for c in sa.classes] if multi else []
    head += ["rank", "percentile"]
    head += ["blast_prob"] if sa.blast_prob is not None else []
    head += ["occlusion_delta"] if sa.occlusion is not None else []
    head += ["image_ok"]
    rk, pct = ranks(explained), percentiles(explained)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for i, cid in enumerate(sa.cell_ids):
            row: list[Any] = [cid, sa.paths[i], f"{explained[i]:.8g}"]
            row += [f"{v:.8g}" for v in sa.attention[i]] if multi else []
            row += [int(rk[i]), f"{pct[i]:.3f}"]
            row += [f"{sa.blast_prob[i]:.6g}"] if sa.blast_prob is not None else []
            row += [f"{sa.occlusion[i]:.6g}"] if sa.occlusion is not None else []
            w.writerow([*row, int(ok[i])])


def _title(sa: SlideAttention, what: str, norm: str, n_missing: int) -> list[str]:
    pred = sa.classes[sa.predicted]
    truth = sa.truth if sa.truth else "unknown"
    mark = "" if not sa.truth else ("  (correct)" if sa.truth == pred else "  (WRONG)")
    lines = [f"slide {sa.slide_id}  -  {what}",
             f"prediction {pred}  p = {sa.probs[sa.predicted]:.3f}  |  truth {truth}{mark}",
             sa.explained()[1],
             *([sa.models] if sa.models else []),
             f"colour: {NORMS[norm][2]}  |  {len(sa.cell_ids)} cells",
             _spread(sa.explained()[0])]
    if n_missing:
        lines.append(f"{n_missing} cell image(s) missing or unreadable (grey tiles marked X)")
    return lines


def _spread(a: np.ndarray) -> str:
    """The raw attention range against uniform, so a rank-coloured flat map is recognisable."""
    n = max(1, len(a))
    return (f"attention weights {a.min(initial=np.inf):.3g} to {a.max(initial=-np.inf):.3g} "
            f"(uniform would be {1 / n:.3g}; max/uniform = {a.max(initial=0.0) * n:.1f}x)")


def _captions(sa: SlideAttention, i: int, a: np.ndarray, rk: np.ndarray, pct: np.ndarray) -> tuple[str, ...]:
    lines = [f"#{rk[i]} a={a[i]:.3g}", f"pct {pct[i]:.0f}"]
    if sa.blast_prob is not None:
        lines[1] += f" blast {sa.blast_prob[i]:.2f}"
    if sa.occlusion is not None:
        lines.append(f"dp {sa.occlusion[i]:+.3f}")
    return tuple(lines)


def export_slide(sa: SlideAttention, out: Path, *, source: Path | None = None, top_k: int = 16,
                 norm: str = "rank", tile: int = 96, name: str | None = None) -> SlideExport:
    """Write attention.csv, gallery.png, mosaic.png (and map.png with coords) for one slide
    into ``out/<name>`` (default: :func:`mil.store.file_name` of the slide)."""
    if sa.attention.ndim != 2 or sa.attention.shape[0] != len(sa.cell_ids):
        raise ValueError(f"slide {sa.slide_id}: attention {sa.attention.shape} for "
                         f"{len(sa.cell_ids)} cells")
    folder = slide_folder(out, sa.slide_id, name)
    folder.mkdir(parents=True, exist_ok=True)
    a, _ = sa.explained()
    values = normalise_attention(a, norm)  # (N,)
    order = np.argsort(-a, kind="stable")  # highest attention first
    rk, pct = ranks(a), percentiles(a)
    files = [(source / p) if source is not None else Path(p) for p in sa.paths]
    m_size, m_border = render.mosaic_tile_size(len(order))
    small, ok = [], np.zeros(len(order), bool)
    for i in order:
        t, ok[i] = render.load_tile(files[i], m_size)
        small.append(t)
    n_missing = int((~ok).sum())
    scale = NORMS[norm]
    top = [int(i) for i in order[:top_k]]
    bottom = [int(i) for i in order[max(len(top), len(order) - top_k):]][::-1]
    sections = [(f"top {len(top)}: highest attention", top),
                (f"bottom {len(bottom)}: lowest attention (lowest first)", bottom)]
    specs = [(h, [render.TileSpec(render.load_tile(files[i], tile)[0], float(values[i]),
                                  _captions(sa, i, a, rk, pct)) for i in idx])
             for h, idx in sections]
    render.gallery(_title(sa, "cell gallery", norm, n_missing), specs, scale).save(folder / "gallery.png")
    grid = render.mosaic_grid(small, values[order], m_border)
    head = render.text_block([*_title(sa, "attention mosaic", norm, n_missing),
                              "every cell, ordered by attention: highest top-left, row by row"],
                             max(grid.width, 640))
    render.stack([head, grid, render.colour_bar(min(head.width, 640), *scale)]).save(folder / "mosaic.png")
    names = {"gallery": "gallery.png", "mosaic": "mosaic.png", "table": "attention.csv"}
    if sa.coords is not None:
        cmap = render.cell_map(sa.coords, values)
        head = render.text_block([*_title(sa, "cell map", norm, n_missing),
                                  "cells at their stored (x, y), y pointing down; high on top"], cmap.width)
        render.stack([head, cmap, render.colour_bar(cmap.width, *scale)]).save(folder / "map.png")
        names["map"] = "map.png"
    grid.thumbnail((160, 160))
    grid.save(folder / "thumb.png")
    names["thumb"] = "thumb.png"
    write_table(folder / "attention.csv", sa, a, ok)
    if n_missing:
        first = files[int(np.flatnonzero(~ok)[0])]
        log.warning("slide %s: %d of %d cell images missing or unreadable (first: %s); drawn as "
                    "placeholders - pass --source if the images moved", sa.slide_id, n_missing,
                    len(ok), first)
    return SlideExport(sa.slide_id, folder.name, sa.truth, sa.classes[sa.predicted],
                       float(sa.probs[sa.predicted]), len(ok), n_missing, names, sa.models)


def write_summary(out: Path, rows: list[SlideExport]) -> Path:
    """summary.csv: one line per exported slide (what index.html shows)."""
    path = out / "summary.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "folder", "truth", "prediction", "probability", "n_cells",
                    "n_missing_images"])
        for r in rows:
            w.writerow([r.slide_id, r.folder, r.truth or "", r.prediction, f"{r.probability:.6f}",
                        r.n_cells, r.n_missing])
    return path
