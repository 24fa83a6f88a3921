"""Per-slide bookkeeping of an extraction: buffers, atomic commits, the run's summary."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mil.extract.fingerprint import FINGERPRINT

log = logging.getLogger("mil.extract")


@dataclass
class Summary:
    slides: int = 0  # committed in this run
    skipped: int = 0  # already complete in the store
    all_failed: list[str] = field(default_factory=list)
    cells: int = 0
    failed: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0  # the embedding loop alone (no model build, no imports)
    missing: int = 0  # failed images: no such file
    unreadable: int = 0  # failed images: the file exists but does not decode
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first such image
    left_out: dict[str, str] = field(default_factory=dict)  # slide -> why (every cell failed)
    changed: list[str] = field(default_factory=list)  # re-extracted: their images changed
    empty: list[str] = field(default_factory=list)  # slide folders without images
    other_files: list[str] = field(default_factory=list)  # files of unsupported types

    def add(self, other: Summary) -> None:
        self.slides += other.slides
        self.all_failed += other.all_failed
        self.cells += other.cells
        self.failed += other.failed
        self.missing += other.missing
        self.unreadable += other.unreadable
        self.examples = {**other.examples, **self.examples}
        self.left_out.update(other.left_out)

    def line(self, out: str) -> str:
        rate = self.cells / self.seconds if self.seconds > 0 else 0.0
        text = (f"extracted {plural(self.slides, 'slide')}, {plural(self.cells, 'cell')} ({self.failed} failed) "
                f"in {self.seconds:.1f} s = {rate:.1f} cells/s -> {out}")
        if self.skipped:
            text += f"; {plural(self.skipped, 'slide')} already complete"
        if self.failed:
            text += f"; failed images: {self.missing} missing, {self.unreadable} unreadable"
        if self.changed:
            text += f"; re-extracted {plural(len(self.changed), 'slide')} whose images changed: " \
                + _few(self.changed)
        if self.all_failed:
            text += (f"; {plural(len(self.all_failed), 'slide')} left out, every cell failed: "
                     + _few(self.all_failed))
        if self.empty:
            text += f"; {plural(len(self.empty), 'slide folder')} without images: {_few(self.empty)}"
        if self.other_files:
            kinds = Counter(Path(f).suffix.lower() or "(no suffix)" for f in self.other_files)
            text += (f"; {plural(len(self.other_files), 'file')} of unsupported type skipped ("
                     + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
                     + f"; e.g. {self.other_files[0]})")
        return text


def plural(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def _few(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")


class SlideSink:
    """Accumulates per-cell results and commits each slide once all its cells are done."""

    def __init__(self, store: Any, cohort: Any, slide_ids: list[str], dim: int, dtype: str,
                 inputs: dict[str, Any] | None = None):
        self.store, self.cohort, self.dim, self.dtype = store, cohort, dim, dtype
        self.inputs = inputs or {}  # slide -> SlideInputs (fingerprint, which files exist)
        self.cells = [c for sid in slide_ids for c in cohort.slides[sid]]
        self.slide_of = np.repeat(np.arange(len(slide_ids)), [len(cohort.slides[s]) for s in slide_ids])
        starts = np.cumsum([0] + [len(cohort.slides[s]) for s in slide_ids])
        self.ids, self.starts = slide_ids, starts
        self.left = np.diff(starts)
        self.bufs: dict[int, Any] = {}
        self.summary = Summary()

    def put(self, index: Any, feats: Any, ok: Any) -> None:
        """index (B,) flat cell indices; feats (B, D) float32 (rows of failed cells ignored)."""
        for s in np.unique(self.slide_of[index]):
            rows = self.slide_of[index] == s
            if s not in self.bufs:
                n = self.left[s]
                self.bufs[s] = (np.zeros((n, self.dim), np.float32), np.zeros(n, bool))
            buf, okb = self.bufs[s]
            local = index[rows] - self.starts[s]
            buf[local], okb[local] = feats[rows], ok[rows]
            self.left[s] -= rows.sum()
            if self.left[s] == 0:
                self._commit(int(s))

    def _commit(self, s: int) -> None:
        buf, okb = self.bufs.pop(s)
        sid, cells = self.ids[s], self.cohort.slides[self.ids[s]]
        inputs = self.inputs.get(sid)
        exists = inputs.exists if inputs is not None else (True,) * len(cells)
        bad = [(c, "unreadable" if there else "missing")
               for c, good, there in zip(cells, okb, exists, strict=True) if not good]
        failed, reasons = [c.rel_path for c, _ in bad], [why for _, why in bad]
        self.summary.failed += len(failed)
        self.summary.missing += reasons.count("missing")
        self.summary.unreadable += reasons.count("unreadable")
        for c, why in bad:
            self.summary.examples.setdefault(why, str(c.path))
        if not okb.any():
            counts = Counter(reasons)
            why = ", ".join(f"{counts[r]} {r}" for r in ("missing", "unreadable") if counts[r])
            log.warning("slide '%s': all %d cells failed to load (%s); left out", sid,
                        len(cells), why)
            self.summary.all_failed.append(sid)
            self.summary.left_out[sid] = f"every image failed: {why}"
            return
        kept = [c for c, good in zip(cells, okb, strict=True) if good]
        coords = (np.array([[c.x, c.y] for c in kept], np.float32)
                  if self.cohort.has_coords else None)
        attrs = {FINGERPRINT: inputs.sha256} if inputs is not None else None
        self.store.write_slide(sid, buf[okb].astype(self.dtype), [c.cell_id for c in kept],
                               [c.rel_path for c in kept], coords=coords, failed=failed,
                               attrs=attrs, failed_reason=reasons)
        self.summary.slides += 1
        self.summary.cells += len(kept)
