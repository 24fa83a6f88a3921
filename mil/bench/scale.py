"""``python -m mil.bench scale``: does the work grow linearly and streamed RAM stay flat?

1. fit: one ``mil.fit`` training epoch (``stream=True``, bags read from an HDF5 store on disk
   inside the loop) at ``--bags`` bags of ``--base-cells`` cells and at ``--cells`` cells per
   bag of ``--base-bags`` bags; each size in a fresh subprocess (its store written before, then
   deleted), whose peak RSS is its own: VmHWM, which exec resets (``ru_maxrss`` from
   ``getrusage`` of the child, recorded beside it, starts from the parent's peak on Linux).
2. extract: ``mil.extract`` end to end (its default path: engine, decode overlap) from JPEG
   files at ``--extract-cells`` cells; the embedding loop's time (no model build).

Prints the fitted log-log exponents: epoch time against work (bags x cells; ~1 when the cost
per cell is constant), extraction time against cells (~1), and streamed peak RSS against
cohort size (~0 when memory is bounded by the batch). ``--sizes F`` multiplies every size by F;
``--quick`` is a smoke run (tiny sizes, 64 dims, the ``test_efficientnet`` backbone at 32 px).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mil.bench.epochs import run_child

HELP = "fit epoch time and streamed peak RSS vs cohort size; extraction time vs cells"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bags", type=_ints, default=[250, 1000, 4000], help="bag counts (comma-separated)")
    p.add_argument("--cells", type=_ints, default=[100, 500, 2000], help="cells per bag")
    p.add_argument("--extract-cells", type=_ints, default=[256, 1024, 4096], help="cells to extract")
    p.add_argument("--base-bags", type=int, default=1000, help="bags while --cells varies")
    p.add_argument("--base-cells", type=int, default=500, help="cells per bag while --bags varies")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="extraction backbone")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"])
    p.add_argument("--sizes", type=float, default=1.0, help="multiply every size by this")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes and backbone")
    p.add_argument("--no-fit", action="store_true")
    p.add_argument("--no-extract", action="store_true")
    p.add_argument("--images", default=None, help="JPEGs to copy (as mil.bench extract)")
    p.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")


def exponent(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two distinct x."""
    if len(set(x)) < 2:
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


QUICK = {"bags": [8, 16, 32], "cells": [8, 16, 32], "extract_cells": [8, 16, 32],
         "base_bags": 16, "base_cells": 16, "dim": 64, "batch_size": 4,
         "backbone": "test_efficientnet", "image_size": 32}


def _shrink(args: argparse.Namespace, defaults: dict[str, Any]) -> None:
    if args.quick:  # the quick sizes, except where a flag was given
        for key, value in QUICK.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    f = args.sizes
    if f != 1.0:
        def scaled(v: int) -> int:
            return max(2, round(v * f))
        args.bags, args.cells = [scaled(v) for v in args.bags], [scaled(v) for v in args.cells]
        args.extract_cells = [scaled(v) for v in args.extract_cells]
        args.base_bags, args.base_cells = scaled(args.base_bags), scaled(args.base_cells)


def _fit_point(root: Path, bags: int, cells: int, args: argparse.Namespace) -> dict[str, Any]:
    """One streamed epoch at ``bags`` x ``cells`` in a fresh process."""
    from mil.bench.fit import write_store

    rng = np.random.default_rng(bags * 7919 + cells)
    pool = rng.standard_normal((8, cells, args.dim), dtype=np.float32).astype(np.float16)
    store = root / f"scale_{bags}x{cells}.h5"
    write_store(store, pool, args.dim, bags=bags)  # 8 distinct bags, cycled: speed not content
    try:
        code = (f"from mil.bench.epochs import store_epoch; store_epoch({str(store)!r}, "
                f"{args.batch_size}, {args.classes}, True)")
        res = run_child(code, args.threads)
    finally:
        store.unlink(missing_ok=True)
    return {"bags": bags, "cells": cells, "work": bags * cells, **res}


def _extract_points(root: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    from mil.bench.extract import MATEK, cellmil, make_cells, options

    opts = options(backbone=args.backbone, image_size=args.image_size,
                   threads=args.threads or None, device="cpu", engine=args.engine)
    images = Path(args.images) if args.images else MATEK
    images = images if images.is_dir() and any(images.glob("*.jpg")) else None
    out = []
    for n in args.extract_cells:
        src = root / f"cells_{n}"
        make_cells(src, n, 50, images)
        r = cellmil(src, root / "extract.h5", opts)
        shutil.rmtree(src)
        out.append({"cells": n, "seconds": r["seconds"], "cells_per_s": r["cells_per_s"]})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mil.bench.machine import machine

    p = argparse.ArgumentParser()
    arguments(p)
    _shrink(args, vars(p.parse_args([])))
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cellmil-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"dim": args.dim, "batch_size": args.batch_size,
                           "load_avg_1min": os.getloadavg()[0]}
    try:
        if not args.no_fit:  # children first: this process is still small
            by_bags = [_fit_point(root, b, args.base_cells, args) for b in args.bags]
            known = {(p["bags"], p["cells"]): p for p in by_bags}
            by_cells = [known.get((args.base_bags, c)) or _fit_point(root, args.base_bags, c, args)
                        for c in args.cells]
            points = list({(p["bags"], p["cells"]): p for p in by_bags + by_cells}.values())
            res["fit"] = {"by_bags": by_bags, "by_cells": by_cells, "exponents": {
                "time_vs_work": exponent([p["work"] for p in points], [p["epoch_s"] for p in points]),
                "time_vs_bags": exponent(args.bags, [p["epoch_s"] for p in by_bags]),
                "time_vs_cells": exponent(args.cells, [p["epoch_s"] for p in by_cells]),
                "stream_rss_vs_bags": exponent(args.bags, [p["peak_rss_mb"] for p in by_bags])}}
        if not args.no_extract:
            ext = _extract_points(root, args)
            res["extract"] = {"backbone": args.backbone, "image_size": args.image_size,
                              "points": ext, "exponents": {"time_vs_cells": exponent(
                                  [p["cells"] for p in ext], [p["seconds"] for p in ext])}}
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    res["load_avg_after"] = os.getloadavg()[0]
    res["machine"] = machine()
    return res


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def table(r: dict[str, Any]) -> str:
    lines = [f"scale: {r['dim']} dims, batch {r['batch_size']}, load {r['load_avg_1min']:.1f} -> "
             f"{r['load_avg_after']:.1f}"]
    if "fit" in r:
        f = r["fit"]
        lines.append(f"{'bags':>6} {'cells':>6} {'epoch s':>9} {'peak RSS MB':>12} "
                     f"{'ru_maxrss MB':>13}   fit, streamed from HDF5, one process each")
        for p in {(q["bags"], q["cells"]): q for q in f["by_bags"] + f["by_cells"]}.values():
            lines.append(f"{p['bags']:6d} {p['cells']:6d} {p['epoch_s']:9.2f} "
                         f"{p['peak_rss_mb']:12.0f} {p['ru_maxrss_mb']:13.0f}")
        e = f["exponents"]
        lines.append(f"exponents: time vs work {_fmt(e['time_vs_work'])} (bags "
                     f"{_fmt(e['time_vs_bags'])}, cells {_fmt(e['time_vs_cells'])}); streamed "
                     f"peak RSS vs bags {_fmt(e['stream_rss_vs_bags'])}")
    if "extract" in r:
        x = r["extract"]
        lines.append(f"extract ({x['backbone']} @ {x['image_size']} px): " + ", ".join(
            f"{p['cells']} cells {p['seconds']:.1f} s" for p in x["points"])
            + f"; exponent time vs cells {_fmt(x['exponents']['time_vs_cells'])}")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The README table's rows."""
    rows = []
    if "fit" in r:
        f, e = r["fit"], r["fit"]["exponents"]
        pts = ", ".join(f"{p['bags']}x{p['cells']} {p['epoch_s']:.1f} s / {p['peak_rss_mb']:.0f} MB"
                        for p in {(q["bags"], q["cells"]): q for q in f["by_bags"] + f["by_cells"]}.values())
        rows.append((f"scale: streamed fit epoch, bags x cells at {r['dim']} dims (load "
                     f"{r['load_avg_1min']:.1f})", f"{pts}; exponents: time vs work "
                     f"{_fmt(e['time_vs_work'])}, streamed peak RSS vs bags {_fmt(e['stream_rss_vs_bags'])}"))
    if "extract" in r:
        x = r["extract"]
        pts = ", ".join(f"{p['cells']} cells {p['seconds']:.1f} s" for p in x["points"])
        rows.append((f"scale: extract, `{x['backbone']}` @ {x['image_size']} px",
                     f"{pts}; exponent time vs cells {_fmt(x['exponents']['time_vs_cells'])}"))
    return rows
