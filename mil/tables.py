"""Reading the CSV tables users give (labels, cell labels, manifests, review sheets).

One reader, one set of one-line errors: a missing file names the file, a missing column names
the column and the columns the file has, a bad row is ``FILE, row N: ...`` (row 1 is the header).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from mil.errors import CliError

Row = dict[str, str]


def read_rows(path: str | Path, required: Sequence[str], *, what: str = "table",
              need: str = "") -> list[tuple[int, Row]]:
    """``[(row number, {column: stripped value})]`` of a CSV with the ``required`` columns.

    ``what`` names the table in the not-found error; ``need`` (e.g. ``slide_id,label``) is
    shown beside a missing column.
    """
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{what} not found: {p}")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in reader.fieldnames or [] if c is not None]
            missing = [c for c in required if c not in cols]
            if missing:
                hint = f"; need {need}" if need else ""
                raise CliError(f"{p}: missing column(s) {', '.join(missing)} "
                               f"(has: {', '.join(cols) or 'none'}{hint})")
            return [(n, {k.strip(): (v or "").strip() for k, v in raw.items() if k})
                    for n, raw in enumerate(reader, start=2)]
    except UnicodeDecodeError:
        raise CliError(f"{p}: not a UTF-8 text CSV file") from None
    except csv.Error as err:
        raise CliError(f"{p}: not a readable CSV file ({err})") from None


def row_error(path: str | Path, row: int, message: str) -> CliError:
    """The error for one bad row: ``FILE, row N: message``."""
    return CliError(f"{path}, row {row}: {message}")
