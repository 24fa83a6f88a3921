"""The two physical layouts of the bag store: HDF5 (one file) and zarr v3 (one directory).

Both hold the same logical tree (see ``features/README.md``)::

    /            attrs: schema, backbone, weights, ...
    slides/<key>/features, cell_ids, paths, failed, [coords], [annotations...]
    _staging/<key>          a slide being written; never read as data

A slide is written under ``_staging`` and then moved into ``slides`` in one step, with the
completion mark set last, so a crash leaves it complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

STAGING = "_staging"
COMPLETE = "complete"
STRING_ARRAYS = ("cell_ids", "paths", "failed")


def _to_attr(value: Any) -> Any:
    """HDF5 attributes hold scalars and strings; containers travel as JSON strings."""
    if isinstance(value, dict | list | tuple):
        return "json:" + json.dumps(value)
    if value is None:
        return "json:null"
    return value


def _from_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _row_chunks(shape: tuple[int, ...], itemsize: int, target_bytes: int = 1 << 20) -> tuple:
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
            self._file = h5py.File(self.path, mode, libver=("earliest", "latest"))
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def root_attrs(self) -> dict[str, Any]:
        return {k: _from_attr(v) for k, v in self.f.attrs.items()}

    def set_root_attrs(self, attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            self.f.attrs[k] = _to_attr(v)
        self.f.flush()

    def slide_keys(self) -> list[str]:
        grp = self.f.get("slides")
        if grp is None:
            return []
        return [k for k in grp if grp[k].attrs.get(COMPLETE, False)]

    def slide_attrs(self, key: str) -> dict[str, Any]:
        return {k: _from_attr(v) for k, v in self.f["slides"][key].attrs.items()}

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
        return {k: _from_attr(v) for k, v in self.f["slides"][key][name].attrs.items()}

    def _create(self, grp: Any, name: str, data: np.ndarray) -> Any:
        import h5py

        if name in STRING_ARRAYS:
            return grp.create_dataset(name, data=np.asarray(data, dtype=object),
                                      dtype=h5py.string_dtype("utf-8"))
        if data.ndim == 0 or data.shape[0] == 0:
            return grp.create_dataset(name, data=data)
        return grp.create_dataset(name, data=data, chunks=_row_chunks(data.shape, data.itemsize))

    def write_slide(self, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        f = self.f
        staging = f.require_group(STAGING)
        if key in staging:
            del staging[key]
        grp = staging.create_group(key)
        for name, data in arrays.items():
            self._create(grp, name, data)
        for k, v in attrs.items():
            grp.attrs[k] = _to_attr(v)
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
            ds.attrs[k] = _to_attr(v)
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


class ZarrBackend:
    """zarr v3 directory store; a slide is committed by renaming its directory into place."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        self.writable = writable

    def close(self) -> None:
        """Nothing to release: zarr reads files on demand."""

    def _group(self, sub: str = "") -> Any:
        import zarr

        mode = "a" if self.writable else "r"
        return zarr.open_group(str(self.path / sub) if sub else str(self.path), mode=mode)

    def root_attrs(self) -> dict[str, Any]:
        return dict(self._group().attrs)

    def set_root_attrs(self, attrs: dict[str, Any]) -> None:
        self._group().attrs.update({k: _from_attr(_to_attr(v)) for k, v in attrs.items()})

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

    def _create(self, grp: Any, name: str, data: np.ndarray,
                attrs: dict[str, Any] | None = None) -> Any:
        """One array with its data and attributes in one call: each zarr call is a round trip
        through zarr's event-loop thread, so metadata and data written together cost one."""
        attributes = {k: _from_attr(_to_attr(v)) for k, v in (attrs or {}).items()}
        if name in STRING_ARRAYS:
            strings = [str(s) for s in data]
            chunks: Any = (max(1, len(strings)),)
            compressors: Any = "auto"
            if not hasattr(np.dtypes, "StringDType"):  # numpy 1.x: zarr's vlen string, two calls
                arr = grp.create_array(name, shape=(len(strings),), dtype=str, chunks=chunks,
                                       attributes=attributes)
                if strings:
                    arr[...] = np.asarray(strings, dtype=str)
                return arr
            data = np.asarray(strings, dtype=np.dtypes.StringDType())  # zarr's vlen-utf8 string
        else:
            chunks = (_row_chunks(data.shape, data.itemsize) if data.ndim and data.shape[0]
                      else None) or "auto"
            compressors = None
        if not data.size:  # nothing to write: metadata only
            return grp.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                    compressors=compressors, attributes=attributes)
        return grp.create_array(name, data=data, chunks=chunks, compressors=compressors,
                                attributes=attributes)

    def write_slide(self, key: str, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
        stage = self.path / STAGING / key
        if stage.exists():
            shutil.rmtree(stage)
        import zarr

        # marked complete from birth: a staged group only becomes a slide when renamed into place
        grp = zarr.create_group(str(stage), overwrite=True, attributes={
            **{k: _from_attr(_to_attr(v)) for k, v in attrs.items()}, COMPLETE: True})
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
        complete = set(self.slide_keys())
        if root.is_dir():
            for d in root.iterdir():
                if d.is_dir() and d.name not in complete:
                    shutil.rmtree(d)
                elif d.is_dir():
                    for tmp in d.glob(f"{STAGING}_*"):
                        shutil.rmtree(tmp)
