"""The bag store's schema: its name and version, backends by suffix, array names."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mil.errors import CliError

SCHEMA_NAME = "cellmil.bagstore"
SCHEMA_VERSION = 2  # 2: checksums, NaN fill (zarr), failed_reason
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".zarr": "zarr"}
# Arrays a slide always has; anything else under a slide is a per-cell annotation.
CORE_ARRAYS = ("features", "cell_ids", "paths", "failed", "failed_reason", "coords")
BLAST_PROB = "blast_prob"  # name of the per-cell annotation written by the blast filter


def now() -> str:
    """UTC time stamp as stored in attributes (seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def backend_of(path: str | Path) -> str:
    """'hdf5' or 'zarr' from the suffix; anything else is a CliError."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise CliError(f"{path}: a bag store must end in .h5, .hdf5 or .zarr (got '{suffix}')")
    return SUFFIXES[suffix]


def check_schema(path: Path, attrs: dict[str, Any]) -> None:
    """Refuse stores that are not cellmil bag stores, or of an unknown or newer schema."""
    schema = attrs.get("schema")
    if not isinstance(schema, str) or "/" not in schema:
        raise CliError(f"{path}: not a cellmil bag store (no 'schema' attribute)")
    name, _, version = schema.rpartition("/")
    if name != SCHEMA_NAME or not version.isdigit():
        raise CliError(f"{path}: unknown store schema '{schema}' (expected {SCHEMA})")
    if int(version) > SCHEMA_VERSION:
        raise CliError(f"{path}: store schema '{schema}' is newer than this cellmil "
                       f"(reads up to {SCHEMA}); upgrade cellmil")
