"""Patient-grouped folds for multi-label targets: iterative stratification (Sechidis, Tsoumakas
& Vlahavas 2011) over the targets' positive patients.

Patients are the unit (a patient's slides must carry the same labels). The rarest target is
dealt first: each of its remaining positive patients goes to the part that most lacks that
target's positives (ties: the part that most lacks patients, then at random), so every part of
the k test folds holds a share of every target's positives (at least one when a target has k
positive patients or more). Patients with no positive go last, by the parts' missing sizes.
Validation patients are carved from each fold's non-test patients the same way, so the training
part keeps positives of every target. Unknown labels count as not positive here.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from mil.errors import CliError
from mil.store import SlideId
from mil.train.splits import Fold


def iterative_stratify(y: np.ndarray, proportions: Sequence[float], rng: random.Random) -> np.ndarray:
    """Part index (n,) of each row of ``y (n, T)`` (True = positive), parts sized by
    ``proportions`` (summing to 1), positives of every column spread alike."""
    y = np.asarray(y, dtype=bool)
    n, t = y.shape
    r = np.asarray(proportions, dtype=np.float64)
    want_rows = r * n  # (P,) patients each part still lacks
    want = r[:, None] * y.sum(0)[None, :]  # (P, T) positives each part still lacks
    part = np.full(n, -1)
    left = np.ones(n, dtype=bool)

    def best(score: np.ndarray) -> int:
        top = np.flatnonzero(np.isclose(score, score.max()))
        if top.size > 1:
            rows = want_rows[top]
            top = top[np.isclose(rows, rows.max())]
        return int(top[rng.randrange(top.size)])

    while left.any():
        counts = y[left].sum(0)  # (T,) remaining positives per column
        if counts.max() == 0:
            for i in rng.sample(sorted(np.flatnonzero(left).tolist()), int(left.sum())):
                p = best(want_rows)
                part[i], left[i] = p, False
                want_rows[p] -= 1
            break
        j = int(np.flatnonzero(counts == counts[counts > 0].min())[0])  # the rarest column
        rows = np.flatnonzero(left & y[:, j]).tolist()
        rng.shuffle(rows)
        for i in rows:
            p = best(want[:, j])
            part[i], left[i] = p, False
            want_rows[p] -= 1
            want[p] -= y[i]
    return part


def _patients(slide_ids: Sequence[SlideId], y: np.ndarray, patient_ids: Sequence[str]
              ) -> tuple[list[str], np.ndarray, dict[str, list[SlideId]]]:
    """(sorted patients, their label rows (P, T) NaN-aware, slides of each patient)."""
    row_of: dict[str, np.ndarray] = {}
    slides_of: dict[str, list[SlideId]] = defaultdict(list)
    for sid, row, pid in zip(slide_ids, np.asarray(y), patient_ids, strict=True):
        prev = row_of.setdefault(pid, row)
        if not np.array_equal(prev, row, equal_nan=True):
            raise CliError(f"splits: patient {pid!r} has slides with different target labels; "
                           "fix the labels or patient ids")
        slides_of[pid].append(sid)
    patients = sorted(slides_of)
    return patients, np.stack([row_of[p] for p in patients]), dict(slides_of)


def make_panel_splits(slide_ids: Sequence[SlideId], y: np.ndarray, patient_ids: Sequence[str],
                      k: int = 5, seed: int = 0, val_fraction: float = 0.2) -> list[Fold]:
    """k patient-grouped folds stratified on ``y (n, T)`` (1, 0, NaN); deterministic by seed."""
    if k < 2:
        raise CliError(f"splits: k must be at least 2, got {k}")
    patients, rows, slides_of = _patients(slide_ids, y, patient_ids)
    pos = rows == 1  # (P, T); NaN compares False
    test_of = iterative_stratify(pos, [1.0 / k] * k, random.Random(seed))
    folds = []
    for i in range(k):
        rest = [p for p, f in zip(patients, test_of, strict=True) if f != i]
        idx = [patients.index(p) for p in rest]
        val_part = (iterative_stratify(pos[idx], [val_fraction, 1 - val_fraction],
                                       random.Random(f"{seed}/{i}"))
                    if val_fraction > 0 else np.ones(len(rest), int))

        def slides(ps: Sequence[str]) -> list[SlideId]:
            return sorted(s for p in ps for s in slides_of[p])

        folds.append(Fold(train=slides([p for p, v in zip(rest, val_part, strict=True) if v == 1]),
                          val=slides([p for p, v in zip(rest, val_part, strict=True) if v == 0]),
                          test=slides([p for p, f in zip(patients, test_of, strict=True) if f == i])))
    return folds
