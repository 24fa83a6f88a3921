"""``python -m mil.bench gpu --out DIR``: the GPU check as one command (under 5 minutes on CUDA).

1. extract: ``mil.bench extract`` on the device with the PyTorch engine at bf16 autocast,
   ``mil.extract``'s default decoding workers and pinned host memory (its CUDA path), against
   the in-memory ceiling and the naive loop;
2. fit: on the device at bf16 autocast, the (d) ceiling (dense tensors already on the device),
   (a) ``mil.fit``'s padded float16 batches from pinned memory, (b) the batch-size-1 loop.

Writes ``DIR/gpu.json`` (with the machine record). ``--device cpu`` runs the same path on the
CPU; with ``--quick`` (tiny sizes, ``test_efficientnet`` at 32 px) it is what CI tests, since
the development machine has no GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mil.bench.epochs import (
    RamSource,
    dense_batches,
    epoch,
    make_model,
    single_loader,
    train_loader,
)

HELP = "GPU check: bf16 extraction (workers, pinned memory) and fit (padded vs bs1), one JSON"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench", help="folder for gpu.json")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--cells", type=int, default=2048, help="cells per extraction round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--bags", type=int, default=1000)
    p.add_argument("--bag-cells", type=int, default=500, help="cells per bag for the fit")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--batch-size", type=int, default=16, help="bags per fit batch")
    p.add_argument("--quick", action="store_true", help="tiny sizes and backbone (the CI path)")


def skip_reason(args: argparse.Namespace) -> str | None:
    """Why this benchmark cannot run here (``all`` records it and moves on), else None."""
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    return None


def _extract(args: argparse.Namespace) -> dict[str, Any]:
    from mil.bench import extract

    opts = extract.options(backbone=args.backbone, image_size=args.image_size, cells=args.cells,
                           batch_size=4 if args.quick else None, rounds=args.rounds,
                           device=args.device, precision="bf16", engine="torch")
    res = extract.run(opts)
    res["pin_memory"] = args.device == "cuda"  # mil.extract pins its batches on CUDA
    return res


def _fit(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dev = torch.device(args.device)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((args.bags, args.bag_cells, args.dim), dtype=np.float32)
    feats = feats.astype(np.float16)  # (B, N, D)
    ids, labels = [str(i) for i in range(args.bags)], [i % 4 for i in range(args.bags)]
    source, pin = RamSource(feats), dev.type == "cuda"
    steps = -(-args.bags // args.batch_size)
    dense = torch.from_numpy(feats).to(dev).float()  # (B, N, D) float32 on the device
    dense_labels = torch.tensor(labels, device=dev)  # (B,)

    def run(model: Any, batches: Any) -> float:
        r = epoch(model, batches, dev, "bf16", warmup=1)
        return r["seconds"] / max(r["steps"], 1) * steps

    ceiling = run(make_model(args.dim, 4), dense_batches(dense, dense_labels, args.batch_size, steps))
    padded = run(make_model(args.dim, 4),
                 train_loader(source, ids, labels, args.batch_size, "gpu", pin=pin))
    bs1 = run(make_model(args.dim, 4), single_loader(source, ids, labels, pin=pin))
    return {"bags": args.bags, "cells": args.bag_cells, "dim": args.dim,
            "batch_size": args.batch_size, "precision": "bf16", "pin_memory": pin,
            "ceiling_epoch_s": ceiling, "padded_epoch_s": padded, "bs1_epoch_s": bs1,
            "speedup": bs1 / padded, "padded_over_ceiling": ceiling / padded}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mil.bench.machine import machine
    from mil.errors import CliError

    reason = skip_reason(args)
    if reason:
        raise CliError(f"{reason}: use --device cpu (with --quick for a smoke run)")
    if args.quick:
        args.cells, args.rounds, args.backbone, args.image_size = 8, 1, "test_efficientnet", 32
        args.bags, args.bag_cells, args.dim, args.batch_size = 8, 16, 32, 4
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"device": args.device, "machine": machine(), "extract": _extract(args), "fit": _fit(args)}
    (out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return res


def table(r: dict[str, Any]) -> str:
    x, f = r["extract"], r["fit"]
    return "\n".join([
        f"gpu check on {r['device']} ({r['machine'].get('gpu') or r['machine']['cpu']})",
        f"  extract {x['backbone']} @ {x['image_size']} px, bf16, {x['workers']} workers, "
        f"batch {x['batch_size']}: ceiling {x['ceiling']['cells_per_s']:.1f} cells/s, cellmil "
        f"{x['cellmil']['cells_per_s']:.1f}, naive {x['naive']['cells_per_s']:.1f}",
        f"  fit {f['bags']} x {f['cells']} x {f['dim']}, bf16: ceiling {f['ceiling_epoch_s']:.2f} "
        f"s/epoch, padded {f['padded_epoch_s']:.2f}, batch size 1 {f['bs1_epoch_s']:.2f} "
        f"(speedup {f['speedup']:.1f} x, padded/ceiling {f['padded_over_ceiling']:.2f})"])


def markdown(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The README table's rows."""
    x, f = r["extract"], r["fit"]
    where = r["machine"].get("gpu") or r["device"]
    return [(f"gpu check ({where}): extract `{x['backbone']}` @ {x['image_size']} px, bf16, "
             f"{x['workers']} workers, pinned memory",
             f"ceiling {x['ceiling']['cells_per_s']:.0f} cells/s, cellmil {x['cellmil']['cells_per_s']:.0f}, "
             f"naive {x['naive']['cells_per_s']:.0f}"),
            (f"gpu check ({where}): fit {f['bags']:,} x {f['cells']} x {f['dim']}, bf16",
             f"ceiling {f['ceiling_epoch_s']:.2f} s, padded {f['padded_epoch_s']:.2f} s "
             f"(padded/ceiling {f['padded_over_ceiling']:.2f}), batch size 1 {f['bs1_epoch_s']:.2f} s "
             f"({f['speedup']:.1f} x)")]
