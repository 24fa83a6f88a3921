"""Patient-grouped, stratified k-fold splits; persisted as ``splits.json`` and leak-checked.

Patients (not slides) are the unit of assignment, so a patient never spans two parts of a
fold. Stratification is by the patient's label; a patient whose slides carry different labels
is a data error and raises :class:`CliError` naming the patient (a genetic subtype is a
property of the patient, so a mix means a wrong label or a wrong patient id).

Algorithm (hand-rolled, no sklearn): per class, sort the patients, shuffle them with
``random.Random(seed)`` and deal them round-robin to the k test folds, the dealing position
carried over from class to class so fold sizes stay balanced. Within each fold, validation
patients are drawn per class from the non-test patients (``round(val_fraction * n)``, at least
one, at most ``n - 1`` per class when ``val_fraction > 0``). Output lists are sorted.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mil.errors import CliError
from mil.store import SlideId

SCHEMA = "cellmil.splits/1"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    """One fold: slide ids of each part (sorted)."""

    train: list[SlideId]
    val: list[SlideId]
    test: list[SlideId]


def _patient_labels(
    slide_ids: Sequence[SlideId], labels: Sequence[Hashable], patient_ids: Sequence[str]
) -> tuple[dict[str, Hashable], dict[str, list[SlideId]]]:
    """(label of each patient, slides of each patient); raises on inconsistent input."""
    if not len(slide_ids) == len(labels) == len(patient_ids):
        raise CliError(
            f"splits: {len(slide_ids)} slide ids, {len(labels)} labels and "
            f"{len(patient_ids)} patient ids: the lengths must match"
        )
    seen: set[SlideId] = set()
    label_of: dict[str, Hashable] = {}
    slides_of: dict[str, list[SlideId]] = defaultdict(list)
    for slide, label, patient in zip(slide_ids, labels, patient_ids, strict=True):
        if slide in seen:
            raise CliError(f"splits: slide {slide!r} is listed twice")
        seen.add(slide)
        if label_of.setdefault(patient, label) != label:
            raise CliError(
                f"splits: patient {patient!r} has slides with different labels "
                f"({label_of[patient]!r} and {label!r}); fix the labels or patient ids"
            )
        slides_of[patient].append(slide)
    return label_of, dict(slides_of)


def _by_class(patients: Sequence[str], label_of: Mapping[str, Hashable]) -> dict[str, list[str]]:
    """Patients grouped by str(label), both levels sorted."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in sorted(patients):
        groups[str(label_of[p])].append(p)
    return dict(sorted(groups.items()))


def make_splits(
    slide_ids: Sequence[SlideId],
    labels: Sequence[Hashable],
    patient_ids: Sequence[str] | None = None,
    k: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> list[Fold]:
    """k patient-grouped stratified folds; the k test parts partition all slides.

    ``patient_ids=None`` treats every slide as its own patient. Deterministic for a given seed
    (and independent of input order).
    """
    if k < 2:
        raise CliError(f"splits: k must be at least 2, got {k}")
    if not 0.0 <= val_fraction < 1.0:
        raise CliError(f"splits: val_fraction must be in [0, 1), got {val_fraction}")
    patient_ids = list(slide_ids) if patient_ids is None else list(patient_ids)
    label_of, slides_of = _patient_labels(slide_ids, labels, patient_ids)
    classes = _by_class(list(slides_of), label_of)
    for cls, members in classes.items():
        if len(members) < k:
            raise CliError(
                f"splits: class {cls!r} has {len(members)} patient(s), fewer than k={k} folds; "
                "lower k or drop/merge the class"
            )
    rng = random.Random(seed)
    test_of: list[list[str]] = [[] for _ in range(k)]
    pos = 0
    for members in classes.values():
        shuffled = members[:]
        rng.shuffle(shuffled)
        for p in shuffled:
            test_of[pos % k].append(p)
            pos += 1
    folds = []
    for i in range(k):
        rest = sorted(set(slides_of) - set(test_of[i]))
        val = _carve_val(rest, label_of, val_fraction, random.Random(f"{seed}/{i}"))
        train = sorted(set(rest) - set(val))

        def slides(ps: Sequence[str]) -> list[SlideId]:
            return sorted(s for p in ps for s in slides_of[p])

        folds.append(Fold(train=slides(train), val=slides(val), test=slides(test_of[i])))
    return folds


def _carve_val(
    patients: Sequence[str], label_of: Mapping[str, Hashable], frac: float, rng: random.Random
) -> list[str]:
    """Stratified validation patients from ``patients``; a class keeps >= 1 training patient."""
    if frac <= 0.0:
        return []
    val: list[str] = []
    for members in _by_class(patients, label_of).values():
        n_val = min(len(members) - 1, max(1, round(frac * len(members))))
        val += rng.sample(members, n_val)
    return val


def check_no_leak(folds: Sequence[Fold], patient_of: Mapping[SlideId, str]) -> None:
    """Raise CliError if a patient appears in two parts of one fold (or a slide has no patient)."""
    for i, fold in enumerate(folds):
        part_of: dict[str, str] = {}
        for part in PARTS:
            for slide in getattr(fold, part):
                if slide not in patient_of:
                    raise CliError(f"splits: slide {slide!r} in fold {i} has no patient id")
                patient = patient_of[slide]
                prev = part_of.setdefault(patient, part)
                if prev != part:
                    raise CliError(
                        f"splits: patient {patient!r} leaks in fold {i}: in both {prev} and {part}"
                    )


def save_splits(folds: Sequence[Fold], path: str | Path, meta: Mapping[str, Any]) -> None:
    """Write ``splits.json``: schema, k, the caller's ``meta`` (seed, val_fraction, ...), folds."""
    doc = {"schema": SCHEMA, "k": len(folds), **meta, "folds": [asdict(f) for f in folds]}
    Path(path).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def load_splits(path: str | Path) -> tuple[list[Fold], dict[str, Any]]:
    """Read ``splits.json`` -> (folds, meta) where meta is every top-level key except folds."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"splits: {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise CliError(f"splits: {path} is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise CliError(f"splits: {path} is not a {SCHEMA} file")
    try:
        folds = [Fold(**{p: list(f[p]) for p in PARTS}) for f in doc.pop("folds")]
    except (KeyError, TypeError):
        raise CliError(f"splits: {path} has malformed folds") from None
    return folds, doc
