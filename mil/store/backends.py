"""The two physical layouts of the bag store: HDF5 (one file, here) and zarr v3 (one directory,
:mod:`mil.store.zarr_backend`), and what they share.

Both hold the same logical tree (see ``features/README.md``)::

    /            attrs: schema, backbone, weights, ...
    slides/<key>/features, cell_ids, paths, failed, [coords], [annotations...]
    _staging/<key>          a slide being written; never read as data

A slide is written under ``_staging`` and then moved into ``slides`` in one step, with the
completion mark set last, so a crash leaves it complete or absent.

Damage is loud: HDF5 numeric datasets carry fletcher32 checksums; zarr arrays carry crc32c
(numeric) or zstd (string) checksums, write every chunk and fill float arrays with NaN, a value
features never take, and a read first checks that every chunk of the array is present. Stores
written before these existed still read (see :mod:`mil.store.verify`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError

STAGING = "_staging"
COMPLETE = "complete"
STRING_ARRAYS = ("cell_ids", "paths", "failed", "failed_reason")
H5_CHECKSUM: dict[str, Any] = {"fletcher32": True}  # on every chunked numeric dataset


class DamagedArray(ValueError):
    """An array whose stored chunks are incomplete."""


def to_attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; containers travel as JSON strings."""
    if isinstance(value, dict | list | tuple):
        return "json:" + json.dumps(value)
    if value is None:
        return "json:null"
    return value


def from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def row_chunks(shape: tuple[int, ...], itemsize: int, target_bytes: int = 1 << 20) -> tuple:
    """Chunks of whole rows, about ``target_bytes`` each."""
    row = int(np.prod(shape[1:], dtype=np.int64)) * itemsize or 1
    rows = max(1, min(shape[0], target_bytes // row))
    return (rows, *shape[1:])


class H5Backend:
    """HDF5 file opened lazily, once per process (safe for forked DataLoader workers)."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._file: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "writable": self.writable, "_file": None, "_pid": -1}

    @property
    def f(self) -> Any:
        import h5py

        if self._file is None or self._pid != os.getpid():
            mode = "a" if self.writable else "r"
            try:
                self._file = h5py.File(self.path, mode, libver=("earliest", "latest"))
            except OSError as err:
                if "lock" in str(err).lower():  # HDF5's own file lock
                    who = ("another process is writing" if not self.writable else
                           "another process is writing or reading")
                    raise CliError(f"{who} {self.path} (HDF5 allows one writer and no reader "
                                   "while it writes); wait for it to finish") from None
                raise
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def root_attrs(self) -> dict[str, Any]:
        return {k: from_attr(v) for k, v in self.f.attrs.items()}

    def set_root_attrs(self, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.f.attrs[k] = to_attr(v)
        self.f.flush()

    def slide_keys(self) -> list[str]:
        grp = self.f.get("slides")
        if grp is None:
            return []
        return [k for k in grp if grp[k].attrs.get(COMPLETE, False)]

    def slide_attrs(self, key: str) -> dict[str, Any]:
        return {k: from_attr(v) for k, v in self.f["slides"][key].attrs.items()}

    def array_names(self, key: str) -> list[str]:
        return list(self.f["slides"][key].keys())

    def read(self, key: str, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        ds = self.f["slides"][key][name]
        if name in STRING_ARRAYS:
            ds = ds.asstr()
        if rows is None:
            return np.asarray(ds[()])
        if isinstance(rows, np.ndarray):  # h5py wants increasing unique indices
            order = np.argsort(rows)
            out = np.asarray(ds[np.sort(rows)])
            return out[np.argsort(order)]
        return np.asarray(ds[rows])

    def array_attrs(self, key: str, name: str) -> dict[str, Any]:
        return {k: from_attr(v) for k, v in self.f["slides"][key][name].attrs.items()}

    # -- inspection (no data read) ----------------------------------------------------------
    def shape(self, key: str, name: str) -> tuple[int, ...]:
        return tuple(self.f["slides"][key][name].shape)

    def missing_chunks(self, key: str, name: str) -> int:
        """Chunks of a chunked dataset that were never allocated (0 for contiguous ones)."""
        ds = self.f["slides"][key][name]
        if ds.chunks is None or ds.size == 0:
            return 0
        expected = int(np.prod([-(-n // c) for n, c in zip(ds.shape, ds.chunks, strict=True)]))
        return expected - int(ds.id.get_num_chunks())

    def checksummed(self, key: str, name: str) -> bool | None:
        """Whether the dataset carries a checksum; None where HDF5 cannot filter it (strings)."""
        ds = self.f["slides"][key][name]
        if name in STRING_ARRAYS or ds.size == 0 or ds.chunks is None:
            return None
        return bool(ds.fletcher32)

    def incomplete_keys(self) -> list[str]:
        """Slide groups without the completion mark (a write that never finished)."""
        grp = self.f.get("slides")
        return [] if grp is None else [k for k in grp if not grp[k].attrs.get(COMPLETE, False)]

    def _create(self, grp: Any, name: str, data: np.ndarray) -> Any:
        import h5py

        if name in STRING_ARRAYS:
            return grp.create_dataset(name, data=np.asarray(data, dtype=object),
                                      dtype=h5py.string_dtype("utf-8"))
        if data.ndim == 0 or data.shape[0] == 0:
            return grp.create_dataset(name, data=data)
        return grp.create_dataset(name, data=data, chunks=row_chunks(data.shape, data.itemsize),
                                  **H5_CHECKSUM)

    def write_slide(self, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        f = self.f
        staging = f.require_group(STAGING)
        if key in staging:
            del staging[key]
        grp = staging.create_group(key)
        for name, data in arrays.items():
            self._create(grp, name, data)
        for k, v in attrs.items():
            grp.attrs[k] = to_attr(v)
        slides = f.require_group("slides")
        if key in slides:
            del slides[key]
        f.move(f"{STAGING}/{key}", f"slides/{key}")
        slides[key].attrs[COMPLETE] = True  # the completion mark, written last
        f.flush()

    def write_array(self, key: str, name: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
        grp = self.f["slides"][key]
        tmp = f"{STAGING}_{name}"
        if tmp in grp:
            del grp[tmp]
        ds = self._create(grp, tmp, data)
        for k, v in attrs.items():
            ds.attrs[k] = to_attr(v)
        if name in grp:
            del grp[name]
        grp.move(tmp, name)
        self.f.flush()

    def delete(self, key: str) -> None:
        del self.f["slides"][key]
        self.f.flush()

    def clean_staging(self) -> None:
        f = self.f
        if STAGING in f:
            del f[STAGING]
        for key in list(f.get("slides", {})):
            if not f["slides"][key].attrs.get(COMPLETE, False):
                del f["slides"][key]
        f.flush()
