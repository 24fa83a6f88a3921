"""``python -m mil.store convert`` and ``import-h5dir``: copy stores, import CLAM/TRIDENT files."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from mil.errors import CliError
from mil.store.bagstore import BagStore, open_store


def _prepare_dst(dst: str | Path, overwrite: bool) -> BagStore:
    p = Path(dst)
    if p.exists():
        if not overwrite:
            raise CliError(f"{p} exists; use --overwrite to replace it")
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return open_store(p, "a")


def convert(src: str | Path, dst: str | Path, overwrite: bool = False) -> int:
    """Copy every slide, annotation and attribute into a store of the other (or same) backend."""
    if Path(src).resolve() == Path(dst).resolve():
        raise CliError(f"convert: source and destination are the same path: {src}")
    s = open_store(src)
    with _prepare_dst(dst, overwrite) as d:
        root = {k: v for k, v in s.attrs.items() if k not in ("schema", "created")}
        d.init({**root, "converted_from": str(src)})
        for sid in s.slides():
            bag = s.read(sid)
            attrs = {k: v for k, v in s.slide_attrs(sid).items()
                     if k not in ("slide_id", "n_cells", "n_failed", "written")}
            d.write_slide(sid, bag.features, bag.cell_ids, bag.paths, bag.coords,
                          s.strings(sid, "failed"), attrs, s.strings(sid, "failed_reason"))
            for name, values in bag.annotations.items():
                extra = {k: v for k, v in s.annotation_attrs(sid, name).items() if k != "written"}
                d.write_annotation(sid, name, values, extra)
    return len(s.slides())


def _h5_files(src: Path) -> list[Path]:
    if not src.is_dir():
        raise CliError(f"import-h5dir: not a folder: {src}")
    files = sorted(src.glob("*.h5")) or sorted((src / "h5_files").glob("*.h5"))
    if not files:
        raise CliError(f"import-h5dir: no .h5 files in {src} (nor in {src}/h5_files)")
    return files


def import_h5dir(src: str | Path, dst: str | Path, backbone: str = "unknown",
                 overwrite: bool = False) -> int:
    """Import CLAM/TRIDENT per-slide files (``features`` (N, D) or (1, N, D), ``coords`` (N, 2))."""
    files = _h5_files(Path(src))
    dim = None
    with _prepare_dst(dst, overwrite) as d:
        for i, f in enumerate(files):
            try:
                with h5py.File(f, "r") as h:
                    if "features" not in h:
                        raise CliError(f"import-h5dir: {f} has no 'features' dataset")
                    feats = np.asarray(h["features"][()])
                    coords = np.asarray(h["coords"][()], dtype=np.float32) if "coords" in h else None
            except OSError as err:
                raise CliError(f"import-h5dir: cannot read {f} ({err})") from None
            if feats.ndim == 3 and feats.shape[0] == 1:
                feats = feats[0]
            if feats.ndim != 2:
                raise CliError(f"import-h5dir: {f}: features must be (N, D), got {feats.shape}")
            if dim is None:
                dim = feats.shape[1]
                d.init({"backbone": backbone, "feature_dim": dim, "dtype": str(feats.dtype),
                        "weights": {"source": "imported", "sha256": None},
                        "imported_from": str(src)})
            elif feats.shape[1] != dim:
                raise CliError(f"import-h5dir: {f} has feature dim {feats.shape[1]}, others {dim}")
            n = feats.shape[0]
            ids = [str(j) for j in range(n)]
            paths = [f"{f.name}#{j}" for j in range(n)]
            d.write_slide(f.stem, feats, ids, paths, coords=coords, attrs={"source_file": f.name})
            print(f"\r[{i + 1}/{len(files)}] {f.stem}", end="", flush=True)
    print()
    return len(files)
