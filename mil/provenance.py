"""Feature provenance: which settings make two sets of features the same features.

The bag store records these keys at extraction (root attributes); a blast filter and a MIL run
record the values of the store they were trained on. Every stage that pairs a model with a store
(``mil.blast predict``, ``mil.fit --test-store``, ``mil.predict``, ``mil.heatmap``) and every
append to a store calls :func:`check_same_features`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mil.errors import CliError

# Root attributes that decide what a feature vector means. ``feature_space`` (mil.extract.engine):
# PyTorch's precision (``fp32``), or an engine's own when it did not reproduce PyTorch (and int8).
# ``stain_norm`` (mil.extract.stain): ``none`` or the normalisation and its reference.
FEATURE_KEYS = ("backbone", "weights_sha256", "feature_dim", "image_size", "mean", "std",
                "interpolation", "dtype", "feature_space", "stain_norm")

# what an absent key meant before the key existed (stores and runs made before stain_norm)
ABSENT_MEANS = {"stain_norm": "none"}


def feature_provenance(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`FEATURE_KEYS` values of a store's root attributes (absent keys as None, or as
    :data:`ABSENT_MEANS` says)."""
    return {k: attrs.get(k, ABSENT_MEANS.get(k)) for k in FEATURE_KEYS}


def _canonical(value: Any) -> str:
    """One text form for values that went through YAML, JSON or HDF5 (tuples, arrays, floats)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return json.dumps([round(float(v), 6) if isinstance(v, float) else v for v in value])
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def feature_differences(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, want's value, got's value)`` for each feature key both record differently."""
    out = []
    for key in FEATURE_KEYS:
        a, b = want.get(key, ABSENT_MEANS.get(key)), got.get(key, ABSENT_MEANS.get(key))
        if a is not None and b is not None and _canonical(a) != _canonical(b):
            out.append((key, a, b))
    return out


def check_same_features(want: Mapping[str, Any], got: Mapping[str, Any], where: str | Path,
                        *, owner: str = "the model") -> None:
    """Refuse features (``got``, described by ``where``) that differ from ``owner``'s ``want``."""
    diff = feature_differences(want, got)
    if diff:
        what = "; ".join(f"{k} {b!r} differs from {owner}'s {a!r}" for k, a, b in diff)
        raise CliError(f"{where}: {what}; use features extracted with the same settings")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
