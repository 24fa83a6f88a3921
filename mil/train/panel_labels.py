"""Multi-label slide labels (``mil.fit --task multilabel``): ``slide_id[,patient_id]`` plus one
column per target holding ``1``, ``0`` or nothing (unknown: masked out of the loss and the
metrics of that target). Targets are the other columns in file order, or ``--targets A,B,C``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mil.errors import CliError
from mil.store import SlideId
from mil.tables import read_rows, row_error
from mil.train.labels import check_in_store

ID_COLUMNS = ("slide_id", "patient_id")
VALUES = {"1": 1.0, "0": 0.0, "": float("nan")}


@dataclass
class PanelTable:
    """Slides with a 0/1/NaN row per slide over ``targets``; NaN = unknown."""

    slide_ids: list[SlideId]
    y: np.ndarray  # (n, T) float32, NaN where unknown
    patients: list[str]
    targets: list[str]

    def label_of(self) -> dict[SlideId, np.ndarray]:
        """slide -> its (T,) row (float32, NaN unknown)."""
        return {s: self.y[i] for i, s in enumerate(self.slide_ids)}

    @property
    def known(self) -> np.ndarray:
        """(n, T) bool: which labels are known."""
        return ~np.isnan(self.y)


def _header(path: str | Path) -> list[str]:
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        first = fh.readline()
    return [c.strip() for c in first.rstrip("\r\n").split(",") if c.strip()]


def read_panel(path: str | Path, targets: Sequence[str] | None = None,
               in_store: Sequence[SlideId] | None = None) -> PanelTable:
    """Read a multi-label CSV; every mistake is one :class:`CliError` line naming the file,
    and for a bad value the row, slide and column."""
    rows = read_rows(path, ("slide_id",), what="labels file",
                     need="slide_id[,patient_id],TARGET1,TARGET2,...")
    if not rows:
        raise CliError(f"{path}: no label rows")
    cols = [c for c in _header(path) if c not in ID_COLUMNS]
    names = list(targets) if targets else cols
    absent = [t for t in names if t not in cols]
    if absent:
        raise CliError(f"{path}: no column(s) {', '.join(absent)} for --targets "
                       f"(target columns: {', '.join(cols) or 'none'})")
    if not names:
        raise CliError(f"{path}: no target columns beside slide_id/patient_id")
    slides, patients = [], []
    y = np.full((len(rows), len(names)), np.nan, dtype=np.float32)
    for i, (line, r) in enumerate(rows):
        sid = r["slide_id"]
        if not sid:
            raise row_error(path, line, "empty slide_id")
        for j, t in enumerate(names):
            value = r.get(t, "")
            if value not in VALUES:
                raise row_error(path, line, f"slide '{sid}', column '{t}': '{value}' is not "
                                            "1, 0 or empty (unknown)")
            y[i, j] = VALUES[value]
        slides.append(sid)
        patients.append(r.get("patient_id") or sid)
    if len(set(slides)) != len(slides):
        dup = sorted({s for s in slides if slides.count(s) > 1})
        raise CliError(f"{path}: slide(s) listed twice: {', '.join(dup[:5])}")
    check_in_store(path, slides, in_store)
    return PanelTable(slides, y, patients, names)


def check_targets(table: PanelTable, path: str | Path, k: int) -> None:
    """Every target needs positive and negative known labels on at least ``k`` patients each
    (one per fold), else a one-line :class:`CliError`."""
    for j, t in enumerate(table.targets):
        for value, what in ((1.0, "positive"), (0.0, "negative")):
            n = len({p for p, v in zip(table.patients, table.y[:, j], strict=True) if v == value})
            if n < k:
                raise CliError(f"{path}: target '{t}' has {n} {what} patient(s), fewer than "
                               f"--folds {k}; lower --folds or drop the target")
