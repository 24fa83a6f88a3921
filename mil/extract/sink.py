"""Per-slide bookkeeping of an extraction: buffers, atomic commits, the run's summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

    def add(self, other: Summary) -> None:
        self.slides += other.slides
        self.all_failed += other.all_failed
        self.cells += other.cells
        self.failed += other.failed

    def line(self, out: str) -> str:
        rate = self.cells / self.seconds if self.seconds > 0 else 0.0
        text = (f"extracted {_n(self.slides, 'slide')}, {_n(self.cells, 'cell')} ({self.failed} failed) "
                f"in {self.seconds:.1f} s = {rate:.1f} cells/s -> {out}")
        if self.skipped:
            text += f"; {_n(self.skipped, 'slide')} already complete"
        if self.all_failed:
            text += (f"; {_n(len(self.all_failed), 'slide')} left out, every cell failed: "
                     + ", ".join(self.all_failed[:5]) + (" ..." if len(self.all_failed) > 5 else ""))
        return text


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


class SlideSink:
    """Accumulates per-cell results and commits each slide once all its cells are done."""

    def __init__(self, store: Any, cohort: Any, slide_ids: list[str], dim: int, dtype: str):
        self.store, self.cohort, self.dim, self.dtype = store, cohort, dim, dtype
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
        failed = [c.rel_path for c, good in zip(cells, okb, strict=True) if not good]
        self.summary.failed += len(failed)
        if not okb.any():
            log.warning("slide '%s': all %d cells failed to load; left out", sid, len(cells))
            self.summary.all_failed.append(sid)
            return
        kept = [c for c, good in zip(cells, okb, strict=True) if good]
        coords = (np.array([[c.x, c.y] for c in kept], np.float32)
                  if self.cohort.has_coords else None)
        self.store.write_slide(sid, buf[okb].astype(self.dtype), [c.cell_id for c in kept],
                               [c.rel_path for c in kept], coords=coords, failed=failed)
        self.summary.slides += 1
        self.summary.cells += len(kept)
