"""Expert cell labels: ``slide_id,cell_id,label`` with label blast/non-blast or 1/0."""

from __future__ import annotations

from pathlib import Path

from mil.errors import CliError
from mil.tables import read_rows, row_error

LABEL_VALUES = {"blast": 1, "1": 1, "non-blast": 0, "nonblast": 0, "non_blast": 0, "0": 0}


def parse_label(value: str) -> int | None:
    """1 (blast), 0 (non-blast) or None for an unknown value; case- and space-insensitive."""
    return LABEL_VALUES.get(value.strip().lower())


def read_cell_labels(path: str | Path) -> dict[tuple[str, str], int]:
    """``{(slide_id, cell_id): 0/1}`` from a label CSV; any bad row is a one-line CliError."""
    rows = read_rows(path, ("slide_id", "cell_id", "label"), what="label file")
    out: dict[tuple[str, str], int] = {}
    for row_no, row in rows:
        value = parse_label(row["label"])
        if value is None:
            raise row_error(path, row_no, f"unknown label {row['label']!r} "
                                          "(expected blast/non-blast or 1/0)")
        key = (row["slide_id"], row["cell_id"])
        if key in out:
            raise row_error(path, row_no, f"cell '{key[1]}' of slide '{key[0]}' is labelled twice")
        out[key] = value
    if not out:
        raise CliError(f"{path}: no labelled cells")
    return out
