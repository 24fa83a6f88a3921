"""``python -m mil.bench extract``: how close extraction from files gets to the model's ceiling.

Three numbers, cells/s, same backbone, batch size and threads:

(a) ceiling: the backbone's forward pass on a batch already in memory (channels_last and
    precision as configured), the best of 3 rounds, so the ratio (b)/(a) is conservative;
(b) cellmil: ``mil.extract`` end to end from 400x400 JPEG files (decode in DataLoader workers,
    batches across slides, atomic per-slide commits to an HDF5 store);
(c) naive: the loop of typical extract scripts: one process, per slide open + timm transform
    each image, forward, write.

Cell images are copied (cycled) from ``--images`` (default: the matek myeloblast JPEGs when
present) or generated from noise and ellipses.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MATEK = Path(__file__).resolve().parents[2] / "shared" / "data" / "matek_lmu" / "myeloblast"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("extract", help="extraction throughput: ceiling vs cellmil vs naive loop")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="none", help="as for mil.extract (speed only: none)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cells", type=int, default=512)
    p.add_argument("--cells-per-slide", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decoding workers (mil.extract's default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--precision", default="32", choices=["32", "bf16"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--images", default=None, help="folder of JPEGs to copy (default: matek or noise)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")
    return p


def make_cells(root: Path, cells: int, per_slide: int, images: Path | None) -> None:
    """``root/slide_k/cell_i.jpg`` 400x400: copies of real crops, or noise + ellipses."""
    from PIL import Image, ImageDraw

    pool = sorted(images.glob("*.jpg")) if images and images.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(cells):
        d = root / f"slide_{i // per_slide:04d}"
        d.mkdir(parents=True, exist_ok=True)
        if pool:
            shutil.copyfile(pool[i % len(pool)], d / f"cell_{i:05d}.jpg")
            continue
        arr = (200 + rng.normal(0, 12, (400, 400, 3))).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        cx, cy, r = rng.integers(150, 250, 2).tolist() + [int(rng.integers(60, 140))]
        ImageDraw.Draw(im).ellipse((cx - r, cy - r, cx + r, cy + r),
                                   fill=tuple(int(v) for v in rng.integers(60, 200, 3)))
        im.save(d / f"cell_{i:05d}.jpg", quality=90)


def ceiling(bb: Any, args: argparse.Namespace) -> dict[str, float]:
    """(a) forward throughput on an in-memory batch; with bf16, cosine to fp32 features."""
    import torch

    from mil.extract import autocast

    model = bb.model.to(memory_format=torch.channels_last) if args.channels_last else bb.model
    x = torch.randn(args.batch_size, 3, bb.image_size, bb.image_size)  # (B, 3, S, S)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    device = torch.device("cpu")
    n_batches = max(1, args.cells // args.batch_size)
    rounds = min(3, n_batches)  # best of 3 rounds: a shared machine only ever slows a round down
    per_round = max(1, n_batches // rounds)
    rates = []
    with torch.inference_mode(), autocast(device, args.precision):
        ref = model(x).float()  # warm-up  (B, D)
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(per_round):
                model(x)
            rates.append(per_round * args.batch_size / (time.perf_counter() - t))
    out = {"cells_per_s": max(rates), "rounds_cells_per_s": rates}
    if args.precision != "32":
        with torch.inference_mode():
            fp32 = model(x)
        out["cosine_vs_fp32_min"] = float(torch.nn.functional.cosine_similarity(ref, fp32).min())
    return out


def cellmil(src: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """(b) mil.extract end to end (model build excluded: the embedding loop is timed)."""
    from mil.extract import ExtractConfig, extract

    cfg = ExtractConfig(source=str(src), out=str(out), backbone=args.backbone,
                        weights=args.weights, image_size=args.image_size,
                        batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                        precision=args.precision, channels_last=args.channels_last, device="cpu")
    s = extract(cfg, progress=False)
    return {"cells_per_s": s.cells / s.embed_seconds, "seconds": s.embed_seconds,
            "cells": s.cells}


def naive(bb: Any, src: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """(c) one process: per slide, open + transform each image, forward in batches, write."""
    import h5py
    import torch
    from PIL import Image

    from mil.backbone import timm_transform

    tf = timm_transform(bb)
    model = bb.model.to(memory_format=torch.contiguous_format)
    n = 0
    t = time.perf_counter()
    with h5py.File(out, "w") as f, torch.inference_mode():
        for slide in sorted(p for p in src.iterdir() if p.is_dir()):
            files = sorted(slide.glob("*.jpg"))
            feats = []
            for i in range(0, len(files), args.batch_size):
                x = torch.stack([tf(Image.open(p).convert("RGB")) for p in files[i:i + args.batch_size]])
                feats.append(model(x).numpy())
            f.create_dataset(slide.name, data=np.concatenate(feats).astype(np.float16))
            n += len(files)
    secs = time.perf_counter() - t
    return {"cells_per_s": n / secs, "seconds": secs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All three measurements; returns a JSON-able dict."""
    import os

    import torch

    from mil.backbone import build_backbone
    from mil.extract import default_workers

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cellmil-bench-"))
    images = Path(args.images) if args.images else (MATEK if MATEK.is_dir() else None)
    try:
        src = root / "cells"
        if src.exists():
            shutil.rmtree(src)
        make_cells(src, args.cells, args.cells_per_slide, images)
        bb = build_backbone(args.backbone, args.weights, args.image_size)
        res: dict[str, Any] = {
            "backbone": args.backbone, "image_size": bb.image_size, "cells": args.cells,
            "batch_size": args.batch_size, "precision": args.precision,
            "channels_last": args.channels_last, "torch_threads": torch.get_num_threads(),
            "workers": default_workers() if args.workers is None else args.workers,
            "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "images": str(images) if images else "generated"}
        res["ceiling"] = ceiling(bb, args)
        for stale in (root / "cellmil.h5", root / "naive.h5"):
            stale.unlink(missing_ok=True)
        res["cellmil"] = cellmil(src, root / "cellmil.h5", args)
        if not args.skip_naive:
            res["naive"] = naive(bb, src, root / "naive.h5", args)
        c = res["cellmil"]["cells_per_s"]
        res["cellmil_over_ceiling"] = c / res["ceiling"]["cells_per_s"]
        if "naive" in res:
            res["cellmil_over_naive"] = c / res["naive"]["cells_per_s"]
        res["load_avg_after"] = os.getloadavg()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return res


def table(res: dict[str, Any]) -> str:
    lines = [f"extract: {res['backbone']} @ {res['image_size']} px, {res['cells']} cells "
             f"({res['images']}), batch {res['batch_size']}, precision {res['precision']}, "
             f"channels_last {res['channels_last']}, {res['torch_threads']} torch threads, "
             f"{res['workers']} workers, load {res['load_avg'][0]:.2f}"]
    for key, what in (("ceiling", "(a) ceiling, tensors in memory"),
                      ("cellmil", "(b) cellmil, files -> store"),
                      ("naive", "(c) naive loop, files -> h5")):
        if key in res:
            lines.append(f"{what:34} {res[key]['cells_per_s']:8.1f} cells/s")
    lines.append(f"(b)/(a) = {res['cellmil_over_ceiling']:.3f}"
                 + (f"   (b)/(c) = {res['cellmil_over_naive']:.2f}" if "naive" in res else ""))
    if "cosine_vs_fp32_min" in res["ceiling"]:
        lines.append(f"min cosine(bf16, fp32) features: {res['ceiling']['cosine_vs_fp32_min']:.5f}")
    return "\n".join(lines)
