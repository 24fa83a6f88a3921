"""``python -m mil.bench fit``: training epoch time, padded batches vs batch size 1, and the
peak RAM of ``--stream`` training from an HDF5 store.

1. Random features (``--bags`` x ``--cells`` x ``--dim``, float16 in RAM). One epoch of the same
   gated-attention model (AdamW step per batch) twice: cellmil's length-bucketed padded batches
   (``--batch-size``) and a batch-size-1 loop (how CLAM and SCEMILA train). Ratio = bs1 / padded.
2. The same bags written to an HDF5 store; in a fresh subprocess per mode, one training epoch
   reading them with ``stream=True`` (per item) and with the default preload; the peak resident
   memory (``ru_maxrss``) of each process is reported.

On a CPU the epoch is bound by arithmetic: the first projection (D -> 128) alone costs
3 x 2 x bags x cells x D x 128 FLOPs, 0.49 TFLOP per epoch at the default sizes, whether the
bags come one at a time or padded. On the 2-core development machine the batch-size-1 loop
already runs that at ~34 GFLOP/s against a ~160 GFLOP/s peak, so no batching can be 10x
faster there; padding removes per-step overhead (launches, optimiser steps, Python), which is
what dominates on a GPU.

``--quick`` shrinks everything (200 bags x 200 cells x 256 dims) for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HELP = "epoch time: padded batches vs batch size 1; --stream peak RAM"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bags", type=int, default=1000)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-stream", action="store_true", help="skip the HDF5 peak-RAM part")
    p.add_argument("--no-compare", action="store_true", help="skip the padded vs bs1 part")
    p.add_argument("--quick", action="store_true", help="200 bags x 200 cells x 256 dims")
    p.add_argument("--dir", default=None, help="where to write the HDF5 store (default: temp)")
    p.add_argument("--seed", type=int, default=0)


def _model(dim: int, classes: int) -> Any:
    import torch

    from mil.train.model import MILClassifier

    torch.manual_seed(0)
    return MILClassifier(dim, classes, hidden=128, attn_hidden=128, dropout=0.25)


def _epoch(model: Any, loader: Any) -> float:
    """Seconds for one training epoch over ``loader`` (batches from :func:`collate_bags`)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = time.perf_counter()
    for batch in loader:
        out = model(batch["feats"], batch["mask"])
        loss = F.cross_entropy(out.logits, batch["label"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


class _RamSource:
    """A :class:`mil.train.data.BagSource` stand-in over an in-RAM float16 array (B, N, D)."""

    def __init__(self, feats: np.ndarray) -> None:
        self.feats = feats
        self.length = {str(i): feats.shape[1] for i in range(feats.shape[0])}

    def get(self, sid: str, pick: Any = None) -> tuple[np.ndarray, None]:
        return self.feats[int(sid)], None


def _loaders(source: Any, ids: list[str], labels: list[int], batch_size: int) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    from mil.train.data import BagDataset, BucketBatchSampler, collate_bags

    ds = BagDataset(source, ids, labels, train=True)
    padded = DataLoader(ds, batch_sampler=BucketBatchSampler(ds.lengths(), batch_size,
                                                             labels=labels, balanced=True),
                        collate_fn=collate_bags)
    single = DataLoader(ds, batch_size=1, shuffle=True, collate_fn=collate_bags)
    return padded, single


def _child(store: str, batch_size: int, classes: int, stream: bool) -> None:
    """Subprocess body: one streamed (or preloaded) epoch; prints peak RSS as JSON."""
    from mil.store import open_store
    from mil.train.data import BagSource

    ids = open_store(store).slides()
    labels = [i % classes for i in range(len(ids))]
    source = BagSource(store, ids, stream=stream)
    padded, _ = _loaders(source, ids, labels, batch_size)
    secs = _epoch(_model(source.feature_dim, classes), padded)
    print(json.dumps({"peak_rss_mb": _peak_rss_mb(), "epoch_s": secs}))


def _peak_rss_mb() -> float:
    """Peak resident memory of this process: VmHWM (reset by exec, unlike ``ru_maxrss``, which
    a child started by fork + exec inherits from its parent), else ``ru_maxrss``."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak(store: Path, args: argparse.Namespace, stream: bool) -> dict[str, float]:
    code = (f"from mil.bench.fit import _child; _child({str(store)!r}, {args.batch_size}, "
            f"{args.classes}, {stream})")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_store(path: Path, feats: np.ndarray) -> None:
    from mil.store import open_store

    ids = [f"c{j}" for j in range(feats.shape[1])]
    with open_store(path, "a") as st:
        st.init({"backbone": "bench", "feature_dim": feats.shape[2], "dtype": "float16"})
        for i, bag in enumerate(feats):
            st.write_slide(f"{i:05d}", bag, ids, ids)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.quick:
        args.bags, args.cells, args.dim = 200, 200, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    feats = rng.standard_normal((args.bags, args.cells, args.dim), dtype=np.float32)
    feats = feats.astype(np.float16)  # (B, N, D) float16 in RAM
    ids, labels = [str(i) for i in range(args.bags)], [i % args.classes for i in range(args.bags)]
    res: dict[str, Any] = {
        "bags": args.bags, "cells": args.cells, "dim": args.dim, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
        "features_gb": feats.nbytes / 1e9,
    }
    if not args.no_compare:
        padded, single = _loaders(_RamSource(feats), ids, labels, args.batch_size)
        torch.manual_seed(args.seed)
        t_pad = _epoch(_model(args.dim, args.classes), padded)
        t_one = _epoch(_model(args.dim, args.classes), single)
        res.update(padded_epoch_s=t_pad, bs1_epoch_s=t_one, speedup=t_one / t_pad)
    if not args.no_stream:
        with tempfile.TemporaryDirectory(prefix="cellmil-bench-fit-", dir=args.dir) as tmp:
            store = Path(tmp) / "bench.h5"
            _write_store(store, feats)
            del feats
            res["stream"] = _peak(store, args, stream=True)
            res["preload"] = _peak(store, args, stream=False)
    return res


def table(r: dict[str, Any]) -> str:
    lines = [f"fit epoch, {r['bags']} bags x {r['cells']} cells x {r['dim']} float16 in RAM, "
             f"{r['threads']} threads, load {r['load_avg_1min']:.1f}"]
    if "speedup" in r:
        lines += [f"  padded batches (batch {r['batch_size']}): {r['padded_epoch_s']:8.2f} s/epoch",
                  f"  batch size 1 loop:          {r['bs1_epoch_s']:8.2f} s/epoch",
                  f"  speedup:                    {r['speedup']:8.1f} x"]
    if "stream" in r:
        lines += [f"HDF5 store ({r['features_gb']:.2f} GB of features), one epoch per process:",
                  f"  --stream peak RSS: {r['stream']['peak_rss_mb']:8.0f} MB "
                  f"({r['stream']['epoch_s']:.1f} s/epoch)",
                  f"  preload  peak RSS: {r['preload']['peak_rss_mb']:8.0f} MB "
                  f"({r['preload']['epoch_s']:.1f} s/epoch)"]
    return "\n".join(lines)
