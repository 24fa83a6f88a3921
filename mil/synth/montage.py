"""A labelled grid of synthetic cells: every cell type, then each class's blasts with/without cue."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mil.synth.canvas import Stain
from mil.synth.cells import render_cell
from mil.synth.config import NON_BLAST_MIX, class_names

log = logging.getLogger("mil.synth")


def montage_rows(classes: int) -> list[tuple[str, str, str | None, bool]]:
    """(row title, cell type, class, shows cue) of each montage row."""
    rows: list[tuple[str, str, str | None, bool]] = [(t, t, None, False) for t in NON_BLAST_MIX]
    rows.append(("blast, no cue (any class)", "blast", None, False))
    rows += [(f"{name} blast: cue", "blast", name, True) for name in class_names(classes)]
    return rows


def write_montage(path: Path, *, classes: int = 4, size: int = 128, seed: int = 0, per_row: int = 6) -> Path:
    """A labelled grid: every cell type, then each class's blasts as pairs of the same blast
    without / with its cue (odd columns: no cue). Titles use Pillow's default font."""
    rows = montage_rows(classes)
    margin, title_h = 190, 16
    sheet = Image.new("RGB", (margin + per_row * size, len(rows) * (size + title_h)), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for r, (title, kind, name, cue) in enumerate(rows):
        top = r * (size + title_h)
        draw.text((4, top + title_h + size // 2 - 6), title, fill="black", font=font)
        for c in range(per_row):
            rng = np.random.default_rng([seed, 9, r, c // 2 if cue else c])
            shows = cue and c % 2 == 1
            img = render_cell(rng, kind, class_name=name, shows_cue=shows, size=size, stain=Stain())
            sheet.paste(Image.fromarray(img), (margin + c * size, top + title_h))
            if cue:
                draw.text((margin + c * size + 4, top + 2), "+cue" if shows else "no cue", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    log.info("synth: montage written to %s", path)
    return path
