"""The audit sample as the review app sees it: cells, their images, and each rater's order.

Only the blinded columns of ``review.csv`` (row, slide_id, cell_id, path) are read; the key
(``key.csv``) and the ``predicted``/``blast_prob`` columns of sheets written before blinding are
never read here, so nothing the app serves can carry them. Images are looked up from this list
only: a request names a position in it, never a path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mil.blast.folder import CELLS, META, REVIEW, CellKey
from mil.errors import CliError
from mil.tables import read_rows, row_error

MAX_NEIGHBOURS = 12


@dataclass(frozen=True)
class ReviewCell:
    row: int
    slide_id: str
    cell_id: str
    source: Path | None  # the original image, when the source root is known
    image: Path  # cells/00001.png written by the audit
    neighbours: tuple[Path, ...]  # cells/00001_n1.png ...

    @property
    def key(self) -> CellKey:
        return (self.slide_id, self.cell_id)


def load_sample(folder: Path) -> list[ReviewCell]:
    """The cells of an audit folder in row order; a folder without review.csv is a CliError."""
    folder = Path(folder)
    if not (folder / REVIEW).is_file():
        raise CliError(f"{folder} is not an audit folder (no {REVIEW}; write one with "
                       "'python -m mil.blast audit STORE --out DIR')")
    meta = json.loads((folder / META).read_text(encoding="utf-8")) \
        if (folder / META).is_file() else {}
    root = Path(meta["source_root"]) if meta.get("source_root") else None
    cells, seen = [], set()
    sheet = folder / REVIEW
    for row_no, r in read_rows(sheet, ("row", "slide_id", "cell_id"), what="review sheet"):
        try:
            row = int(r["row"])
        except ValueError:
            raise row_error(sheet, row_no, f"row {r['row']!r} is not a number") from None
        key = (r["slide_id"], r["cell_id"])
        if key in seen:
            raise row_error(sheet, row_no, f"cell '{key[1]}' of slide '{key[0]}' is listed twice")
        seen.add(key)
        path = r.get("path", "")
        source = (root / path if root else Path(path)) if path else None
        stem = folder / CELLS / f"{row:05d}"
        near = tuple(p for k in range(1, MAX_NEIGHBOURS + 1)
                     if (p := stem.with_name(f"{stem.name}_n{k}.png")).is_file())
        cells.append(ReviewCell(row, key[0], key[1], source, stem.with_suffix(".png"), near))
    if not cells:
        raise CliError(f"{folder / REVIEW}: no cells")
    return cells


def rater_seed(rater: str) -> int:
    """A seed from the rater's name (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(rater.encode("utf-8")).digest()[:8], "little")


def rater_order(cells: list[ReviewCell], rater: str) -> list[ReviewCell]:
    """The cells in the rater's own seeded order: two raters do not see the same sequence."""
    perm = np.random.default_rng(rater_seed(rater)).permutation(len(cells))
    return [cells[i] for i in perm]
