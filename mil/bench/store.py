"""``python -m mil.bench store``: random-access read speed of the bag store, HDF5 vs zarr.

Writes ``--bags`` bags of ``--cells`` x ``--dim`` float16 into each backend, then reads every bag
once in a random order (as a shuffling DataLoader does) and reports bags/s and MB/s. The first
pass after writing is served mostly from the OS page cache; numbers are for a warm cache.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "bag store write and random-access read speed (h5 vs zarr)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bags", type=int, default=1000)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--backends", default="h5,zarr", help="comma-separated: h5,zarr")
    p.add_argument("--dir", default=None, help="where to write the stores (default: a temp dir)")
    p.add_argument("--seed", type=int, default=0)


def _bench_backend(path: Path, bags: int, cells: int, dim: int, seed: int) -> dict[str, float]:
    from mil.store import open_store

    rng = np.random.default_rng(seed)
    block = rng.normal(size=(cells, dim)).astype(np.float16)  # (N, D), reused: speed not content
    ids = [f"c{i}" for i in range(cells)]
    t0 = time.perf_counter()
    with open_store(path, "a") as st:
        st.init({"backbone": "bench", "feature_dim": dim, "dtype": "float16"})
        for b in range(bags):
            st.write_slide(f"slide{b:05d}", block, ids, ids)
    t_write = time.perf_counter() - t0
    st = open_store(path)
    order = rng.permutation(st.slides())
    t0 = time.perf_counter()
    total = 0
    for sid in order:
        total += st.features(str(sid)).nbytes
    t_read = time.perf_counter() - t0
    st.close()
    return {
        "write_bags_per_s": bags / t_write,
        "read_bags_per_s": bags / t_read,
        "read_mb_per_s": total / t_read / 1e6,
        "gb": total / 1e9,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark each backend; returns a JSON-able dict."""
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cellmil-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"bags": args.bags, "cells": args.cells, "dim": args.dim}
    try:
        for name in args.backends.split(","):
            path = root / f"bench.{name}"
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            results[name] = _bench_backend(path, args.bags, args.cells, args.dim, args.seed)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"bag store, {results['bags']} bags x {results['cells']} cells x {results['dim']} "
             "float16 (random order, warm cache)",
             f"{'backend':8} {'write bags/s':>13} {'read bags/s':>12} {'read MB/s':>10}"]
    for name in ("h5", "zarr"):
        if name in results:
            r = results[name]
            lines.append(f"{name:8} {r['write_bags_per_s']:13.1f} {r['read_bags_per_s']:12.1f} "
                         f"{r['read_mb_per_s']:10.1f}")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The README table's row."""
    parts = []
    for name, label in (("h5", "HDF5"), ("zarr", "zarr")):
        if name in r:
            x = r[name]
            parts.append(f"{label} reads {x['read_bags_per_s']:.0f} bags/s "
                         f"({x['read_mb_per_s'] / 1000:.2f} GB/s), writes {x['write_bags_per_s']:.0f} bags/s")
    return [(f"store, {r['bags']:,} bags x {r['cells']} x {r['dim']} float16, random-order reads "
             "(warm cache); writes", "; ".join(parts))]
