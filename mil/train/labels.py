"""Slide labels: ``slide_id,label[,patient_id]`` CSVs, checked row by row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mil.errors import CliError
from mil.store import SlideId
from mil.tables import read_rows, row_error


@dataclass
class LabelTable:
    """Slides with their class index, patient and the class names (index order)."""

    slide_ids: list[SlideId]
    labels: list[int]
    patients: list[str]
    classes: list[str]

    def label_of(self) -> dict[SlideId, int]:
        return dict(zip(self.slide_ids, self.labels, strict=True))

    def names(self) -> dict[SlideId, str]:
        """slide -> class name."""
        return {s: self.classes[y] for s, y in zip(self.slide_ids, self.labels, strict=True)}


def read_labels(path: str | Path, classes: Sequence[str] | None = None,
                in_store: Sequence[SlideId] | None = None) -> LabelTable:
    """Read ``slide_id,label[,patient_id]``; every mistake is a one-line :class:`CliError`."""
    rows = read_rows(path, ("slide_id", "label"), what="labels file",
                     need="slide_id,label[,patient_id]")
    if not rows:
        raise CliError(f"{path}: no label rows")
    names = list(classes) if classes else sorted({r["label"] for _, r in rows})
    index = {c: i for i, c in enumerate(names)}
    slides, labels, patients = [], [], []
    for line, r in rows:
        sid, lab = r["slide_id"], r["label"]
        if not sid or not lab:
            raise row_error(path, line, "empty slide_id or label")
        if lab not in index:
            raise row_error(path, line, f"class '{lab}' of slide '{sid}' is not one of "
                                        f"--classes {','.join(names)}")
        slides.append(sid)
        labels.append(index[lab])
        patients.append(r.get("patient_id") or sid)
    check_in_store(path, slides, in_store)
    return LabelTable(slides, labels, patients, names)


def check_in_store(path: str | Path, slides: Sequence[SlideId],
                   in_store: Sequence[SlideId] | None) -> None:
    """A one-line :class:`CliError` naming labelled slides that ``in_store`` lacks."""
    if in_store is None:
        return
    known = set(in_store)
    absent = [s for s in slides if s not in known]
    if absent:
        shown = ", ".join(absent[:5]) + (f" (+{len(absent) - 5} more)" if len(absent) > 5 else "")
        raise CliError(f"{path}: {len(absent)} labelled slide(s) not in the store: {shown}")
