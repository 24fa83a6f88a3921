"""One rater's answers: ``raters/NAME.csv``, rewritten atomically on every change.

    answers = RaterAnswers(folder, "anna", sample_keys)
    answers.set(("S01", "c007"), "blast")      # written before this returns
    answers.undo()                             # -> (("S01", "c007"), None): unanswered again

``raters/NAME.csv`` holds ``slide_id,cell_id,label,answered_at``, one row per answered cell
(its latest answer), and is replaced as a whole (temporary file, fsync, ``os.replace``), so a
crash or a closed tab never leaves half a file. Every change is also appended to
``raters/history/NAME.csv`` (``at,slide_id,cell_id,before,after,action``); undo steps back
through it, also after a restart. A lock file keeps a second server of the same rater out.
"""

from __future__ import annotations

import csv
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from mil.blast.folder import ANSWERS, RATER_COLUMNS, RATERS, CellKey, rater_path
from mil.errors import CliError
from mil.tables import read_rows, row_error

HISTORY_COLUMNS = ("at", "slide_id", "cell_id", "before", "after", "action")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RaterAnswers:
    """The answers of one rater to the cells ``keys`` of an audit folder."""

    def __init__(self, folder: Path, rater: str, keys: set[CellKey]) -> None:
        self.path = rater_path(folder, rater)
        self.history_path = folder / RATERS / "history" / f"{rater}.csv"
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = keys
        self._lock = threading.Lock()
        self._lockfile = _hold_lock(folder / RATERS / f".{rater}.lock", rater)
        self.answers: dict[CellKey, tuple[str, str]] = {}
        if self.path.is_file():
            for row_no, r in read_rows(self.path, RATER_COLUMNS[:3], what="rater file"):
                key = (r["slide_id"], r["cell_id"])
                if r["label"] not in ANSWERS or key not in keys:
                    raise row_error(self.path, row_no, f"label {r['label']!r} of cell "
                                                       f"'{key[1]}' is not an answer to this audit")
                self.answers[key] = (r["label"], r.get("answered_at", ""))
        self._stack = self._replay()

    def _replay(self) -> list[tuple[CellKey, str]]:
        """The undo stack, (cell, label before) per change not yet undone, from the history."""
        stack: list[tuple[CellKey, str]] = []
        if self.history_path.is_file():
            for _, r in read_rows(self.history_path, HISTORY_COLUMNS, what="rater history"):
                if r["action"] == "undo":
                    if stack:
                        stack.pop()
                else:
                    stack.append(((r["slide_id"], r["cell_id"]), r["before"]))
        return stack

    def label(self, key: CellKey) -> str | None:
        return self.answers[key][0] if key in self.answers else None

    def set(self, key: CellKey, label: str) -> None:
        """Answer ``key`` with ``label`` (one of ANSWERS) and write the file at once."""
        if label not in ANSWERS or key not in self.keys:
            raise ValueError(f"not an answer to this audit: {key} {label!r}")
        with self._lock:
            before = self.label(key) or ""
            self.answers[key] = (label, _now())
            self._write()
            self._log(key, before, label, "set")
            self._stack.append((key, before))

    def undo(self) -> tuple[CellKey, str | None] | None:
        """Take back the last change: (cell, its label now or None), or None if none is left."""
        with self._lock:
            if not self._stack:
                return None
            key, before = self._stack.pop()
            now = self.label(key) or ""
            if before:
                self.answers[key] = (before, _now())
            else:
                self.answers.pop(key, None)
            self._write()
            self._log(key, now, before, "undo")
            return key, before or None

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(RATER_COLUMNS)
            w.writerows([[k[0], k[1], lab, at] for k, (lab, at) in self.answers.items()])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _log(self, key: CellKey, before: str, after: str, action: str) -> None:
        new = not self.history_path.is_file()
        with self.history_path.open("a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(HISTORY_COLUMNS)
            w.writerow([_now(), key[0], key[1], before, after, action])

    def close(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()
            self._lockfile = None


def _hold_lock(path: Path, rater: str) -> IO[str] | None:
    """An exclusive lock held while the server runs (released by the OS if it dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no second-server guard
        return None
    fh = path.open("a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise CliError(f"rater '{rater}' is already being served from this audit "
                       f"(lock {path}); stop that server first") from None
    return fh
