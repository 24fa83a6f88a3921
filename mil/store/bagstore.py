"""The bag store: per-slide cell embeddings in HDF5 (``.h5``/``.hdf5``) or zarr v3 (``.zarr``).

    store = open_store("features/cohort.h5")          # read-only, opened lazily
    bag = store.read("slide 7")                         # Bag(features (N, D), cell_ids, paths, ...)

    with open_store("features/cohort.zarr", "a") as st:
        st.init({"backbone": "tf_efficientnet_lite0", ...})
        st.write_slide("slide 7", feats, cell_ids, paths)      # atomic
        st.write_annotation("slide 7", "blast_prob", probs)    # beside the features
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError
from mil.outputs import require_writable
from mil.provenance import feature_differences
from mil.store.backends import H5Backend
from mil.store.bag import Bag, SlideId
from mil.store.keys import decode_key, encode_key
from mil.store.schema import CORE_ARRAYS, SCHEMA, backend_of, check_schema, now
from mil.store.zarr_backend import ZarrBackend


class BagStore:
    """One interface over both backends. Use :func:`open_store` to get one."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        self.kind = backend_of(self.path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        self.writable = mode == "a"
        exists = self.path.exists()
        if not exists and not self.writable:
            raise CliError(f"bag store not found: {self.path}")
        if self.writable:
            require_writable(self.path, "bag store")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        cls = H5Backend if self.kind == "hdf5" else ZarrBackend
        self._b = cls(self.path, self.writable)
        self._keys: dict[SlideId, str] | None = None
        if exists:
            try:
                attrs = self._b.root_attrs()
            except (OSError, ValueError, FileNotFoundError) as err:
                raise CliError(f"{self.path}: cannot be read as {self.kind} ({err})") from None
            if attrs or not self.writable:
                check_schema(self.path, attrs)
            if self.writable:
                self._b.clean_staging()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> BagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._b.close()

    # -- root attributes -------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (schema, backbone, weights, feature_dim, ...)."""
        return self._b.root_attrs()

    def init(self, attrs: dict[str, Any], overwrite: bool = False) -> None:
        """Stamp a new store with its provenance; on an existing one check compatibility.

        A store with slides made under other feature settings (:data:`mil.provenance.FEATURE_KEYS`) is refused unless
        ``overwrite``, which deletes its slides first.
        """
        self._require_writable()
        old = self._b.root_attrs()
        if self.check_compatible(attrs, overwrite):
            for sid in self.slides():
                self.delete_slide(sid)
        stamp = {"schema": SCHEMA, "created": old.get("created") or now()}
        self._b.set_root_attrs({**attrs, **stamp})

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Add or replace root attributes of an initialised store (e.g. the extraction's notes)."""
        self._require_writable()
        self._b.set_root_attrs(attrs)

    def check_compatible(self, attrs: dict[str, Any], overwrite: bool = False) -> list[tuple]:
        """The feature settings in which this store's slides differ from ``attrs`` (a CliError
        unless ``overwrite``): checked before a run starts its expensive work, and by init."""
        old = self._b.root_attrs()
        if not (old and self.slides()):
            return []
        diff = feature_differences(old, attrs)
        if diff and not overwrite:
            what = ", ".join(f"{k}: store has {a!r}, this run {b!r}" for k, a, b in diff)
            raise CliError(f"{self.path} was made with other settings ({what}); "
                           "use --overwrite to replace it or choose another output")
        return diff

    # -- reading ---------------------------------------------------------------------------
    def _key_map(self) -> dict[SlideId, str]:
        if self._keys is None:
            keys = {}
            for key in self._b.slide_keys():
                sid = decode_key(key)
                keys[sid if sid is not None else self._b.slide_attrs(key)["slide_id"]] = key
            self._keys = keys
        return self._keys

    def slides(self) -> list[SlideId]:
        """Ids of the complete slides, sorted."""
        return sorted(self._key_map())

    def __contains__(self, slide_id: object) -> bool:
        return slide_id in self._key_map()

    def __len__(self) -> int:
        return len(self._key_map())

    def _key(self, slide_id: SlideId) -> str:
        key = self._key_map().get(slide_id)
        if key is None:
            raise CliError(f"{self.path}: no slide '{slide_id}' in the store")
        return key

    def slide_attrs(self, slide_id: SlideId) -> dict[str, Any]:
        """slide_id, n_cells, n_failed and whatever the writer added."""
        attrs = self._b.slide_attrs(self._key(slide_id))
        attrs.pop("complete", None)
        return attrs

    def n_cells(self, slide_id: SlideId) -> int:
        return int(self.slide_attrs(slide_id)["n_cells"])

    def _data(self, slide_id: SlideId, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """One array of a slide; a damaged one (unreadable, checksum or chunks missing,
        non-finite floats) is a one-line CliError naming the slide, never data."""
        key = self._key(slide_id)
        try:
            out = self._b.read(key, name, rows)
        except (OSError, ValueError, KeyError) as err:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DamagedSlide(self.path, slide_id, name, why) from None
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).sum())
            raise DamagedSlide(self.path, slide_id, name, f"{bad} non-finite value(s)")
        return out

    def features(self, slide_id: SlideId, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, D) embeddings, or only ``rows`` (in the order given)."""
        return self._data(slide_id, "features", rows)

    def strings(self, slide_id: SlideId, name: str) -> list[str]:
        """A string array: ``cell_ids``, ``paths``, ``failed`` or ``failed_reason``.

        ``failed_reason`` ('missing' or 'unreadable' per failed image) is absent from stores
        written before it existed: their reasons read as 'unknown'.
        """
        if name == "failed_reason" and name not in self._b.array_names(self._key(slide_id)):
            return ["unknown"] * int(self.slide_attrs(slide_id).get("n_failed", 0))
        return [str(s) for s in self._data(slide_id, name)]

    def annotations(self, slide_id: SlideId) -> list[str]:
        """Names of the per-cell annotations of a slide (e.g. ``blast_prob``)."""
        names = self._b.array_names(self._key(slide_id))
        return sorted(n for n in names if n not in CORE_ARRAYS and not n.startswith("_"))

    def annotation(self, slide_id: SlideId, name: str) -> np.ndarray | None:
        """A per-cell annotation (N,), or None when the slide does not have it."""
        if name not in self.annotations(slide_id):
            return None
        return self._data(slide_id, name)

    def annotation_attrs(self, slide_id: SlideId, name: str) -> dict[str, Any]:
        return self._b.array_attrs(self._key(slide_id), name)

    def coords(self, slide_id: SlideId) -> np.ndarray | None:
        """(N, 2) cell coordinates, or None when the slide has none."""
        has = "coords" in self._b.array_names(self._key(slide_id))
        return self._data(slide_id, "coords") if has else None

    def inspect(self, slide_id: SlideId) -> dict[str, tuple[tuple[int, ...], int, bool | None]]:
        """array -> (shape, chunks missing, checksummed or None), from metadata only."""
        key, b = self._key(slide_id), self._b
        return {n: (b.shape(key, n), b.missing_chunks(key, n), b.checksummed(key, n))
                for n in sorted(b.array_names(key)) if not n.startswith("_")}

    def incomplete(self) -> list[str]:
        """Keys of slide groups without the completion mark (never read as slides)."""
        return sorted(self._b.incomplete_keys())

    def read(self, slide_id: SlideId) -> Bag:
        """Everything stored for one slide."""
        names = self._b.array_names(self._key(slide_id))
        return Bag(
            slide_id=slide_id,
            features=self.features(slide_id),
            cell_ids=self.strings(slide_id, "cell_ids"),
            paths=self.strings(slide_id, "paths"),
            coords=self.coords(slide_id) if "coords" in names else None,
            annotations={n: self._data(slide_id, n) for n in self.annotations(slide_id)},
        )

    # -- writing ---------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise CliError(f"{self.path} is open read-only")

    def write_slide(
        self,
        slide_id: SlideId,
        features: np.ndarray,
        cell_ids: list[str],
        paths: list[str],
        coords: np.ndarray | None = None,
        failed: list[str] | None = None,
        attrs: dict[str, Any] | None = None,
        failed_reason: list[str] | None = None,
    ) -> None:
        """Write (or replace) one slide atomically: afterwards it is complete or absent.

        ``failed_reason`` says why each ``failed`` image was left out ('missing', 'unreadable').
        """
        self._require_writable()
        n = len(cell_ids)
        if features.ndim != 2 or features.shape[0] != n or len(paths) != n:
            raise ValueError(f"slide '{slide_id}': features {features.shape}, {n} cell ids, "
                             f"{len(paths)} paths do not agree")
        if len(set(cell_ids)) != n:
            raise CliError(f"slide '{slide_id}': cell ids are not unique")
        arrays: dict[str, np.ndarray] = {
            "features": features,
            "cell_ids": np.asarray(cell_ids, dtype=object),
            "paths": np.asarray(paths, dtype=object),
            "failed": np.asarray(list(failed or []), dtype=object),
        }
        if failed_reason is not None:
            if len(failed_reason) != len(failed or []):
                raise ValueError(f"slide '{slide_id}': {len(failed_reason)} reasons for "
                                 f"{len(failed or [])} failed images")
            arrays["failed_reason"] = np.asarray(list(failed_reason), dtype=object)
        if coords is not None:
            arrays["coords"] = np.asarray(coords, dtype=np.float32).reshape(n, 2)
        meta = {**(attrs or {}), "slide_id": slide_id, "n_cells": n,
                "n_failed": len(failed or []), "written": now()}
        key = encode_key(slide_id)
        self._b.write_slide(key, arrays, meta)
        self._key_map()[slide_id] = key

    def write_annotation(self, slide_id: SlideId, name: str, values: np.ndarray,
                         attrs: dict[str, Any] | None = None) -> None:
        """Add or replace a per-cell annotation beside the features (never rewriting them)."""
        self._require_writable()
        if name in CORE_ARRAYS or name.startswith("_") or not name.isidentifier():
            raise ValueError(f"'{name}' cannot be an annotation name")
        n = self.n_cells(slide_id)
        values = np.asarray(values)
        if values.shape[0] != n:
            raise ValueError(f"slide '{slide_id}': {values.shape[0]} values for {n} cells")
        self._b.write_array(self._key(slide_id), name, values, {**(attrs or {}), "written": now()})

    def delete_slide(self, slide_id: SlideId) -> None:
        self._require_writable()
        self._b.delete(self._key(slide_id))
        del self._key_map()[slide_id]


class DamagedSlide(CliError):
    """A slide array that cannot be trusted: unreadable, checksum or chunks missing, non-finite."""

    def __init__(self, path: Path, slide_id: SlideId, name: str, why: str) -> None:
        super().__init__(f"{path}: slide '{slide_id}': {name} is damaged ({why}); "
                         f"python -m mil.store verify {path} lists every bad slide")
        self.slide_id, self.name, self.why = slide_id, name, why


def open_store(path: str | Path, mode: str = "r") -> BagStore:
    """Open a bag store; the backend follows the suffix. ``mode`` is 'r' or 'a' (create)."""
    return BagStore(path, mode)
