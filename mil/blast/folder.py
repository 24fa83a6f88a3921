"""The files of an audit folder, the answer vocabulary, and reading them with one-line errors.

An audit folder (written by ``python -m mil.blast audit``) holds:

    review.csv        row,slide_id,cell_id,path,expert   blinded: no call, no probability
    key.csv           row,slide_id,cell_id,predicted,blast_prob   the filter's calls (the key)
    review.json       design, seed, predicted-class shares of the whole store, source root
    cells/00001.png   the cell of row 1 (and 00001_n1.png ... its neighbours on the slide)
    raters/NAME.csv   slide_id,cell_id,label,answered_at   one file per expert (mil.review)

Audits written before blinding have ``predicted`` and ``blast_prob`` in review.csv and no key;
both are read. An answer is one of ``blast``, ``non-blast``, ``unsure`` or ``unusable`` (not a
usable cell: artefact, smudge, cut off).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from mil.errors import CliError
from mil.tables import read_rows, row_error

BLAST, NONBLAST, UNSURE, UNUSABLE = "blast", "non-blast", "unsure", "unusable"
ANSWERS = (BLAST, NONBLAST, UNSURE, UNUSABLE)
REVIEW, KEY, META, RATERS, CELLS = "review.csv", "key.csv", "review.json", "raters", "cells"
SHEET_COLUMNS = ("row", "slide_id", "cell_id", "path", "expert")
KEY_COLUMNS = ("row", "slide_id", "cell_id", "predicted", "blast_prob")
RATER_COLUMNS = ("slide_id", "cell_id", "label", "answered_at")
RATER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_ANSWER_VALUES = {
    "blast": BLAST, "1": BLAST, "b": BLAST,
    "non-blast": NONBLAST, "nonblast": NONBLAST, "non_blast": NONBLAST, "0": NONBLAST,
    "n": NONBLAST, "unsure": UNSURE, "u": UNSURE, "?": UNSURE,
    "unusable": UNUSABLE, "x": UNUSABLE, "artefact": UNUSABLE, "artifact": UNUSABLE,
}

CellKey = tuple[str, str]  # (slide_id, cell_id)


def parse_answer(value: str) -> str | None:
    """The canonical answer for ``value`` (case- and space-insensitive), None if unknown."""
    return _ANSWER_VALUES.get(value.strip().lower())


def check_rater_name(name: str) -> str:
    """``name`` if it is a plain word (letters, digits, ``_``, ``-``; 1-40), else CliError."""
    if not RATER_NAME.fullmatch(name or ""):
        raise CliError(f"rater name {name!r} must be a plain word: letters, digits, '_' or '-', "
                       "at most 40, starting with a letter or digit")
    return name


def rater_path(folder: Path, name: str) -> Path:
    return folder / RATERS / f"{check_rater_name(name)}.csv"


def read_rater(path: Path) -> dict[CellKey, str]:
    """``{(slide_id, cell_id): answer}`` of one rater file; a bad value names its row."""
    out: dict[CellKey, str] = {}
    for row_no, row in read_rows(path, RATER_COLUMNS[:3], what="rater file"):
        label = parse_answer(row["label"])
        if label is None:
            raise row_error(path, row_no, f"unknown label {row['label']!r} "
                                          f"(expected one of {', '.join(ANSWERS)})")
        out[(row["slide_id"], row["cell_id"])] = label
    return out


def rater_files(folder: Path) -> dict[str, Path]:
    """``{rater name: file}`` of ``folder/raters/*.csv``, sorted by name."""
    d = folder / RATERS
    files = sorted(d.glob("*.csv")) if d.is_dir() else []
    return {p.stem: p for p in files if RATER_NAME.fullmatch(p.stem)}


def count_answers(folder: Path) -> list[tuple[Path, int]]:
    """(file, number of answers) of every file in ``folder`` that holds expert answers."""
    found = []
    sheet = folder / REVIEW
    if sheet.is_file():
        with sheet.open(newline="", encoding="utf-8-sig") as fh:
            n = sum(bool((r.get("expert") or "").strip()) for r in csv.DictReader(fh))
        if n:
            found.append((sheet, n))
    for path in rater_files(folder).values():
        with path.open(newline="", encoding="utf-8-sig") as fh:
            n = sum(1 for _ in csv.DictReader(fh))
        if n:
            found.append((path, n))
    return found
