"""The zarr v3 layout of the bag store: one directory, one group per slide (see
:mod:`mil.store.backends` for the tree both layouts hold).

A slide is committed by renaming its staged directory into place; an annotation by renaming
its temporary array. While open for writing the store holds its writer lock
(:mod:`mil.store.lock`). Arrays carry checksums, every chunk is written and float arrays are
filled with NaN, so a deleted chunk or flipped bytes fail a read instead of reading as zeros.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mil.store import lock
from mil.store.backends import (
    COMPLETE,
    STAGING,
    STRING_ARRAYS,
    DamagedArray,
    from_attr,
    row_chunks,
    to_attr,
)


class ZarrBackend:
    """zarr v3 directory store; a slide is committed by renaming its directory into place."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._lock = lock.acquire(path) if writable else None
        self._whole: set[tuple[str, str]] = set()  # arrays whose chunks were all found

    def close(self) -> None:
        """Release the writer lock; zarr itself reads files on demand and holds nothing."""
        if self._lock is not None:
            lock.release(self._lock)
            self._lock = None

    def _group(self, sub: str = "") -> Any:
        import zarr

        mode = "a" if self.writable else "r"
        return zarr.open_group(str(self.path / sub) if sub else str(self.path), mode=mode)

    def root_attrs(self) -> dict[str, Any]:
        return dict(self._group().attrs)

    def set_root_attrs(self, attrs: dict[str, Any]) -> None:
        self._group().attrs.update({k: from_attr(to_attr(v)) for k, v in attrs.items()})

    def slide_keys(self) -> list[str]:
        root = self.path / "slides"
        if not root.is_dir():
            return []
        out = []
        for d in root.iterdir():
            meta = d / "zarr.json"
            if meta.is_file() and json.loads(meta.read_text())["attributes"].get(COMPLETE):
                out.append(d.name)
        return out

    def slide_attrs(self, key: str) -> dict[str, Any]:
        meta = json.loads((self.path / "slides" / key / "zarr.json").read_text())
        return dict(meta["attributes"])

    def array_names(self, key: str) -> list[str]:
        base = self.path / "slides" / key
        return [d.name for d in base.iterdir() if (d / "zarr.json").is_file()]

    def _array(self, key: str, name: str) -> Any:
        import zarr

        return zarr.open_array(str(self.path / "slides" / key / name), mode="r")

    def read(self, key: str, name: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        arr = self._array(key, name)
        if (key, name) not in self._whole:  # once per array and process: a directory listing
            missing = arr.nchunks - arr.nchunks_initialized
            if missing:
                raise DamagedArray(f"{missing} of {arr.nchunks} chunk(s) missing")
            self._whole.add((key, name))
        if rows is None:
            data = arr[...]
        elif isinstance(rows, np.ndarray):
            data = arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1))
        else:
            data = arr[rows]
        data = np.asarray(data)
        return data.astype(object) if name in STRING_ARRAYS else data

    def array_attrs(self, key: str, name: str) -> dict[str, Any]:
        return dict(self._array(key, name).attrs)

    # -- inspection (no data read) ----------------------------------------------------------
    def shape(self, key: str, name: str) -> tuple[int, ...]:
        return tuple(self._array(key, name).shape)

    def missing_chunks(self, key: str, name: str) -> int:
        arr = self._array(key, name)
        return int(arr.nchunks - arr.nchunks_initialized)

    def checksummed(self, key: str, name: str) -> bool | None:
        codecs = self._array(key, name).metadata.codecs
        return any(type(c).__name__ == "Crc32cCodec" or getattr(c, "checksum", False)
                   for c in codecs)

    def incomplete_keys(self) -> list[str]:
        root = self.path / "slides"
        if not root.is_dir():
            return []
        complete = set(self.slide_keys())
        return [d.name for d in root.iterdir() if d.is_dir() and d.name not in complete]

    def _create(self, grp: Any, name: str, data: np.ndarray,
                attrs: dict[str, Any] | None = None) -> Any:
        """One array with its data and attributes in one call: each zarr call is a round trip
        through zarr's event-loop thread, so metadata and data written together cost one."""
        from zarr.codecs import Crc32cCodec, ZstdCodec

        attributes = {k: from_attr(to_attr(v)) for k, v in (attrs or {}).items()}
        # every chunk written (none left implicit as the fill value), each with a checksum
        extra: dict[str, Any] = {"attributes": attributes, "config": {"write_empty_chunks": True}}
        if name in STRING_ARRAYS:
            strings = [str(s) for s in data]
            chunks: Any = (max(1, len(strings)),)
            extra["compressors"] = [ZstdCodec(level=0, checksum=True)]
            if not hasattr(np.dtypes, "StringDType"):  # numpy 1.x: zarr's vlen string, two calls
                arr = grp.create_array(name, shape=(len(strings),), dtype=str, chunks=chunks,
                                       **extra)
                if strings:
                    arr[...] = np.asarray(strings, dtype=str)
                return arr
            data = np.asarray(strings, dtype=np.dtypes.StringDType())  # zarr's vlen-utf8 string
        else:
            chunks = (row_chunks(data.shape, data.itemsize) if data.ndim and data.shape[0]
                      else None) or "auto"
            extra["compressors"] = [Crc32cCodec()]
            if data.dtype.kind == "f":
                extra["fill_value"] = np.nan  # what a missing chunk reads as: never a feature
        if not data.size:  # nothing to write: metadata only
            return grp.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                    **extra)
        return grp.create_array(name, data=data, chunks=chunks, **extra)

    def write_slide(self, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        stage = self.path / STAGING / key
        if stage.exists():
            shutil.rmtree(stage)
        import zarr

        # marked complete from birth: a staged group only becomes a slide when renamed into place
        grp = zarr.create_group(str(stage), overwrite=True, attributes={
            **{k: from_attr(to_attr(v)) for k, v in attrs.items()}, COMPLETE: True})
        for name, data in arrays.items():
            self._create(grp, name, data)
        dest = self.path / "slides" / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not (self.path / "slides" / "zarr.json").exists():
            zarr.open_group(str(self.path / "slides"), mode="a")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(stage, dest)  # atomic commit

    def write_array(self, key: str, name: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
        import zarr

        base = self.path / "slides" / key
        tmp = base / f"{STAGING}_{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        grp = zarr.open_group(str(base), mode="a")
        self._create(grp, tmp.name, data, attrs)
        dest = base / name
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)

    def delete(self, key: str) -> None:
        shutil.rmtree(self.path / "slides" / key)

    def clean_staging(self) -> None:
        if (self.path / STAGING).exists():
            shutil.rmtree(self.path / STAGING)
        root = self.path / "slides"
        for key in self.incomplete_keys():
            shutil.rmtree(root / key)
        for tmp in root.glob(f"*/{STAGING}_*"):
            shutil.rmtree(tmp)
