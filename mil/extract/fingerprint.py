"""What a slide was extracted from: a fingerprint of its input files, taken before extraction.

The fingerprint of a slide is the sha256 of its cells' sorted relative paths, cell ids,
coordinates, file sizes and modification times (one ``stat`` per file, no reading), stored as
the slide attribute ``inputs_sha256``. A resume compares it with the cohort on disk now, so a
slide whose folder gained, lost or changed images is extracted again instead of being taken as
done by its name (:mod:`mil.extract.resume`). The same scan tells missing files apart from
files that exist but cannot be decoded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mil.errors import CliError
from mil.extract.sources import Cell, Cohort

FINGERPRINT = "inputs_sha256"  # the slide attribute


@dataclass(frozen=True)
class SlideInputs:
    """A slide's fingerprint and, per cell in cohort order, whether its file exists."""

    sha256: str
    exists: tuple[bool, ...]

    @property
    def n_missing(self) -> int:
        return self.exists.count(False)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def slide_inputs(cells: list[Cell]) -> SlideInputs:
    """The fingerprint of one slide's cells (sorted by relative path) and which files exist."""
    stats = [_stat(c.path) for c in cells]
    h = hashlib.sha256()
    for c, st in sorted(zip(cells, stats, strict=True), key=lambda cs: cs[0].rel_path):
        size, mtime = st if st is not None else (-1, -1)
        h.update(f"{c.rel_path}\t{c.cell_id}\t{c.x}\t{c.y}\t{size}\t{mtime}\n".encode())
    return SlideInputs(h.hexdigest(), tuple(st is not None for st in stats))


def scan_inputs(cohort: Cohort, source: str | Path) -> dict[str, SlideInputs]:
    """slide -> its inputs; a cohort in which no image file exists is a CliError, before any
    model is built (e.g. manifest paths written relative to another folder)."""
    inputs = {sid: slide_inputs(cells) for sid, cells in cohort.slides.items()}
    if all(i.n_missing == len(i.exists) for i in inputs.values()):
        first = next(iter(cohort.slides.values()))[0]
        raise CliError(f"{source}: none of the {cohort.n_cells()} image files exists (e.g. "
                       f"{first.path}); relative paths are read from {cohort.root}")
    return inputs
