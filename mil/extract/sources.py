"""Finding the cell images of a cohort: a folder per slide, or a CSV manifest.

Folder layout: ``ROOT/<slide_id>/**/*.{jpg,jpeg,png,tif,tiff,bmp}`` (any case). The cell id is the
image path relative to its slide folder, without suffix; order is sorted and deterministic.

Manifest: a CSV with ``slide_id,path`` and optional ``cell_id,x,y``; relative paths are taken
from the manifest's folder. Without ``cell_id`` a cell is named by its file stem.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from mil.errors import CliError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})


@dataclass(frozen=True)
class Cell:
    """One cell image of one slide."""

    slide_id: str
    cell_id: str
    path: Path  # absolute
    rel_path: str  # relative to the cohort root, as stored in the bag store
    x: float | None = None
    y: float | None = None


@dataclass
class Cohort:
    """All cells to extract, grouped by slide in a deterministic order."""

    root: Path
    slides: dict[str, list[Cell]]
    has_coords: bool = False
    empty: list[str] = field(default_factory=list)  # slide folders without any cell image
    other_files: list[str] = field(default_factory=list)  # files of unsupported types, skipped

    def n_cells(self) -> int:
        return sum(len(c) for c in self.slides.values())


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def from_folders(root: Path) -> Cohort:
    """One sub-folder per slide; images anywhere below it."""
    if not root.is_dir():
        raise CliError(f"source folder not found: {root}")
    slides: dict[str, list[Cell]] = {}
    empty, other = [], []
    for slide_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p for p in slide_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
        other += [_rel(p, root) for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
        cells = []
        for p in files:
            cell_id = p.relative_to(slide_dir).with_suffix("").as_posix()
            cells.append(Cell(slide_dir.name, cell_id, p.resolve(), _rel(p, root)))
        _check_unique(cells, str(slide_dir))
        if cells:
            slides[slide_dir.name] = cells
        else:
            empty.append(slide_dir.name)
    if not slides:
        found_other = f" (found only other files, e.g. {other[0]})" if other else ""
        raise CliError(f"no cell images ({', '.join(sorted(IMAGE_SUFFIXES))}) in slide folders "
                       f"under {root}{found_other}")
    return Cohort(root.resolve(), slides, empty=empty, other_files=other)


def _float(value: str, column: str, where: str) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise CliError(f"{where}: column '{column}' is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise CliError(f"{where}: column '{column}' is not a finite number: {value!r}")
    return number


def from_manifest(csv_path: Path) -> Cohort:
    """A CSV manifest with ``slide_id,path`` (+ optional ``cell_id,x,y``)."""
    if not csv_path.is_file():
        raise CliError(f"manifest not found: {csv_path}")
    base = csv_path.parent.resolve()
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip() for c in reader.fieldnames or []}
        missing = [c for c in ("slide_id", "path") if c not in cols]
        if missing:
            raise CliError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)} "
                           f"(has: {', '.join(sorted(cols)) or 'none'})")
        slides: dict[str, list[Cell]] = {}
        seen: dict[tuple[str, str], int] = {}
        has_coords = {"x", "y"} <= cols
        for row_no, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            where = f"{csv_path}, row {row_no}"
            if not row["slide_id"] or not row["path"]:
                raise CliError(f"{where}: empty slide_id or path")
            p = Path(row["path"])
            abs_p = p if p.is_absolute() else base / p
            cell_id = row.get("cell_id") or p.stem
            first = seen.setdefault((row["slide_id"], cell_id), row_no)
            if first != row_no:
                raise CliError(f"{where}: duplicate cell id '{cell_id}' in slide "
                               f"'{row['slide_id']}' (first at row {first})")
            x, y = _float(row.get("x", ""), "x", where), _float(row.get("y", ""), "y", where)
            slides.setdefault(row["slide_id"], []).append(
                Cell(row["slide_id"], cell_id, abs_p, _rel(abs_p, base), x, y))
            if has_coords and (x is None or y is None):
                raise CliError(f"{where}: x and y must be given for every row or none")
    if not slides:
        raise CliError(f"{csv_path}: manifest has no rows")
    return Cohort(base, slides, has_coords)


def _check_unique(cells: list[Cell], where: str) -> None:
    seen: set[str] = set()
    for c in cells:
        if c.cell_id in seen:
            raise CliError(f"{where}: duplicate cell id '{c.cell_id}' in slide '{c.slide_id}'")
        seen.add(c.cell_id)


def find_cells(source: str | Path, manifest: bool | None = None) -> Cohort:
    """Folder-per-slide tree or CSV manifest (``manifest=None``: a ``.csv`` file is a manifest)."""
    src = Path(source)
    if not src.exists():
        raise CliError(f"source not found: {src}")
    if manifest is None:
        manifest = src.is_file() and src.suffix.lower() == ".csv"
    if manifest:
        return from_manifest(src)
    if src.is_file():
        raise CliError(f"{src} is a file; pass a folder of slide folders, or --manifest for a CSV")
    return from_folders(src)
