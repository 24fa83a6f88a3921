"""``python -m mil.store verify STORE``: is every slide whole, readable and finite?

Two depths. :func:`check_store` with ``full=False`` reads metadata only (``mil.store info``
shows it): completion marks, array shapes against ``n_cells`` / ``n_failed`` / ``feature_dim``,
chunks present. ``full=True`` (``verify``) also reads every value: HDF5 fletcher32 and zarr
crc32c/zstd checksums, finite features and annotations, cell ids non-empty and unique.

Stores written before checksums existed still verify; their unchecked arrays are counted, since
flipped bytes there can only be caught when they make a value non-finite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mil.store.bagstore import BagStore, DamagedSlide, open_store
from mil.store.keys import decode_key
from mil.store.schema import CORE_ARRAYS

REQUIRED = ("features", "cell_ids", "paths", "failed")


@dataclass
class StoreHealth:
    """What a check found: bad slides (id -> problems), arrays without checksums."""

    path: Path
    slides: int
    full: bool
    bad: dict[str, list[str]] = field(default_factory=dict)
    unchecked: int = 0  # numeric arrays stored without a checksum (older stores)

    @property
    def ok(self) -> bool:
        return not self.bad

    def lines(self) -> list[str]:
        """One line per bad slide, then the verdict."""
        out = [f"bad slide '{sid}': {'; '.join(why)}" for sid, why in self.bad.items()]
        depth = "every value read" if self.full else "metadata only"
        verdict = (f"{self.path}: {self.slides - len(self.bad)} of {self.slides} slides healthy"
                   f" ({depth})")
        if self.bad:
            verdict += f"; {len(self.bad)} bad"
        if self.unchecked:
            verdict += (f"; {self.unchecked} array(s) without checksums (written by an older "
                        "cellmil): flipped bytes there are caught only when not finite")
        return [*out, verdict]


def _shape_problems(store: BagStore, sid: str, dim: object) -> list[str]:
    attrs = store.slide_attrs(sid)
    n, n_failed = int(attrs.get("n_cells", -1)), int(attrs.get("n_failed", 0))
    info = store.inspect(sid)
    problems = [f"{name} missing" for name in REQUIRED if name not in info]
    want = {"cell_ids": (n,), "paths": (n,), "failed": (n_failed,),
            "failed_reason": (n_failed,), "coords": (n, 2)}
    for name, (shape, missing, _) in info.items():
        if missing:
            problems.append(f"{name}: {missing} chunk(s) missing")
        if name == "features":
            if len(shape) != 2 or shape[0] != n:
                problems.append(f"features {shape} for n_cells {n}")
            elif dim is not None and shape[1] != int(dim):  # type: ignore[call-overload]
                problems.append(f"features have {shape[1]} dims, the store {dim}")
        elif name in want and shape != want[name]:
            problems.append(f"{name} {shape}, expected {want[name]}")
        elif name not in CORE_ARRAYS and (not shape or shape[0] != n):
            problems.append(f"annotation {name} {shape} for n_cells {n}")
    return problems


def _value_problems(store: BagStore, sid: str) -> list[str]:
    try:
        bag = store.read(sid)  # features, ids, paths, coords, annotations: each checked
        store.strings(sid, "failed")
    except DamagedSlide as err:
        return [f"{err.name}: {err.why}"]
    problems = []
    for what, values in (("cell id", bag.cell_ids), ("path", bag.paths)):
        if any(not v for v in values):
            problems.append(f"{sum(not v for v in values)} empty {what}(s)")
    if len(set(bag.cell_ids)) != len(bag.cell_ids):
        problems.append(f"{len(bag.cell_ids) - len(set(bag.cell_ids))} duplicate cell id(s)")
    return problems


def check_store(store: BagStore, full: bool = True) -> StoreHealth:
    """Every slide of ``store``, by metadata (``full=False``) or by every value too."""
    slides = store.slides()
    incomplete = store.incomplete()
    health = StoreHealth(store.path, len(slides) + len(incomplete), full)
    for key in incomplete:
        health.bad[decode_key(key) or key] = [
            "no completion mark (an interrupted write: never read as a slide, removed at the "
            "next write)"]
    dim = store.attrs.get("feature_dim")
    for sid in slides:
        try:
            problems = _shape_problems(store, sid, dim)
            if full and not problems:
                problems = _value_problems(store, sid)
            if not problems:
                health.unchecked += sum(c is False for _, _, c in store.inspect(sid).values())
        except (OSError, ValueError, KeyError) as err:  # the metadata itself is unreadable
            problems = [f"unreadable ({(str(err).splitlines() or [type(err).__name__])[0]})"]
        if problems:
            health.bad[sid] = problems
    return health


def verify(path: str | Path) -> StoreHealth:
    """Open ``path`` read-only and check every value of every slide."""
    with open_store(path) as store:
        return check_store(store, full=True)
