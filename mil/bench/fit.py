"""``python -m mil.bench fit``: training epoch time against its arithmetic ceiling, padded
batches vs batch size 1, and the peak RAM of ``--stream`` training from an HDF5 store.

Random features (``--bags`` x ``--cells`` x ``--dim``, float16 in RAM as ``BagSource`` holds
them), the same gated-attention model (AdamW step per batch) in every row:

(d) ceiling: forward + backward + optimiser step on views of one dense, pre-cast float32 tensor
    of the same total size: no loader, no collate, no cast, no padding, the same steps;
(a) padded: ``mil.fit``'s training loader (length-bucketed, class-balanced batches of
    ``--batch-size``, collated to float32 with one copy thread, as on the CPU) into the model;
(a0) before issue 16 (``--no-legacy`` skips it): V and U as two GEMMs, the pool masking again,
    float16 batches copied with the torch threads and cast inside the model; same process,
    same allocator settings;
(ac) with ``--compile``: (a) with the model under ``torch.compile`` (its compile time apart);
(b) a batch-size-1 loop (how CLAM and SCEMILA train), once. Speedup = (b) / (a).

(d), (a), (a0), (ac) train their epochs with their steps interleaved (a step of each in turn,
:func:`mil.bench.epochs.interleaved`), so a shared machine's slow and fast spells fall on every
row alike, for ``--rounds`` rounds; each row's first batch is not timed. Figures are seconds
per epoch (per-step time x steps); a row's headline is its best round, padded/ceiling the
median of the rounds' ratios (1.0 = at the ceiling).
The process keeps freed buffers on the heap as ``mil.fit`` does on the CPU (page faults per
step are reported; ``--no-malloc-tuning`` leaves glibc's defaults, as before issue 16, so (a0)
of such a run is the whole old path). Then the same bags are written to an HDF5 store and, in a fresh subprocess
per mode, one epoch reads them with ``stream=True`` and with the default preload (peak RSS).

Notes from the 2-core development machine (shared, load 3-10). The epoch is arithmetic: the
first projection (D -> 128) alone costs 3 x 2 x bags x cells x D x 128 FLOPs, 0.49 TFLOP at the
default sizes, and dropout's random masks (``bernoulli_``) take a large share of the rest, in
the ceiling as much as in (a). What separated (a) from (d) before issue 16 was not arithmetic:
every per-bag copy of the collate is its own parallel region, and on a CPU shared with other
processes each region waits for its slowest thread (16 bags of 500 x 1,280: 189 ms with 2
threads at load 8, 5.7 ms with 1), then a second pass cast float16 to float32 inside the model
into a fresh 41 MB buffer; glibc maps such buffers afresh and faults them in again every
step (6,900-8,700 minor page faults per step with ``--no-malloc-tuning``, 1 without). ``mil.fit`` on the CPU now collates on one thread straight into float32 and,
with the bags in RAM, keeps freed buffers on the heap (not when streaming: there the heap grew
with every bag read). ``torch.compile`` (inductor, CPU) was slower than eager here
(``--compile``; not enabled), and fusing V and U into one GEMM is a small share (the attention
works on 128 dims, the projection on 1,280).

``--quick`` shrinks everything (200 bags x 200 cells x 256 dims) for a smoke run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mil.bench.epochs import (
    RamSource,
    dense_batches,
    epoch,
    interleaved,
    make_model,
    run_child,
    single_loader,
    train_loader,
)

HELP = "epoch time vs its arithmetic ceiling; padded batches vs batch size 1; --stream peak RAM"


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
    p.add_argument("--rounds", type=int, default=2, help="rounds of (d), (a), (a0) interleaved")
    p.add_argument("--no-legacy", action="store_true", help="skip (a0), the pre-issue-16 path")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="leave glibc's allocator as it is (mil.fit before issue 16)")
    p.add_argument("--compile", action="store_true", help="also (ac): the model under torch.compile")
    p.add_argument("--dir", default=None, help="where to write the HDF5 store (default: temp)")
    p.add_argument("--seed", type=int, default=0)


def _peak(store: Path, args: argparse.Namespace, stream: bool) -> dict[str, float]:
    code = (f"from mil.bench.epochs import store_epoch; store_epoch({str(store)!r}, "
            f"{args.batch_size}, {args.classes}, {stream})")
    return run_child(code, args.threads)


def write_store(path: Path, feats: Any, dim: int, bags: int | None = None) -> None:
    """An HDF5 store of ``feats`` (B, N, D); with ``bags``, ``bags`` bags cycling through them."""
    from mil.store import open_store

    n = len(feats) if bags is None else bags
    ids = [f"c{j}" for j in range(feats.shape[1])]
    with open_store(path, "a") as st:
        st.init({"backbone": "bench", "feature_dim": dim, "dtype": "float16"})
        for i in range(n):
            st.write_slide(f"{i:05d}", feats[i % len(feats)], ids, ids)


def _rows(args: argparse.Namespace, feats: np.ndarray, ids: list[str], labels: list[int]
          ) -> tuple[Any, dict[str, float]]:
    """A callable timing one round (all rows interleaved), and setup figures (compile time)."""
    import torch

    from mil.bench.legacy import legacy_model

    source = RamSource(feats)
    steps = len(train_loader(source, ids, labels, args.batch_size))
    dense = torch.from_numpy(feats).float()  # (B, N, D) float32, cast before the clock
    dense_labels = torch.tensor(labels)  # (B,)
    setup: dict[str, float] = {}
    compiled = None
    if args.compile:
        compiled = torch.compile(make_model(args.dim, args.classes))
        t0 = time.perf_counter()
        two = args.batch_size * 2
        epoch(compiled, train_loader(source, ids[:two], labels[:two], args.batch_size))
        setup["compile_s"] = time.perf_counter() - t0

    def one_round() -> dict[str, dict[str, float]]:
        rows = {"ceiling": (make_model(args.dim, args.classes),
                            dense_batches(dense, dense_labels, args.batch_size, steps)),
                "padded": (make_model(args.dim, args.classes),
                           train_loader(source, ids, labels, args.batch_size))}
        if not args.no_legacy:
            rows["legacy"] = (legacy_model(make_model(args.dim, args.classes)),
                              train_loader(source, ids, labels, args.batch_size, "legacy"))
        if compiled is not None:
            rows["compiled"] = (compiled, train_loader(source, ids, labels, args.batch_size))
        return interleaved(rows)

    return one_round, setup


def _per_epoch(r: dict[str, float], steps: int) -> float:
    return r["seconds"] / max(r["steps"], 1) * steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mil.allocator import keep_freed_memory
    from mil.errors import CliError

    if args.rounds < 1:
        raise CliError(f"--rounds must be >= 1, got {args.rounds}")
    if args.quick:
        args.bags, args.cells, args.dim = 200, 200, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else keep_freed_memory()  # as mil.fit does on the CPU
    rng = np.random.default_rng(args.seed)
    feats = rng.standard_normal((args.bags, args.cells, args.dim), dtype=np.float32)
    feats = feats.astype(np.float16)  # (B, N, D) float16 in RAM
    ids, labels = [str(i) for i in range(args.bags)], [i % args.classes for i in range(args.bags)]
    res: dict[str, Any] = {
        "bags": args.bags, "cells": args.cells, "dim": args.dim, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0],
        "features_gb": feats.nbytes / 1e9, "rounds": args.rounds, "malloc_tuned": tuned,
    }
    if not args.no_compare:
        steps = -(-args.bags // args.batch_size)
        one_round, setup = _rows(args, feats, ids, labels)
        res.update(setup)
        got: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for name, r in one_round().items():
                got.setdefault(name, []).append(r)
        for name, rounds in got.items():
            per = [_per_epoch(r, steps) for r in rounds]
            res[name] = {"epoch_s": min(per), "rounds_epoch_s": per,
                         "faults_per_step": rounds[-1]["faults_per_step"]}
        res["ratios"] = {f"{name}/ceiling": _paired(got["ceiling"], got[name], steps)
                         for name in got if name != "ceiling"}
        t_one = epoch(make_model(args.dim, args.classes),
                      single_loader(RamSource(feats), ids, labels))["seconds"]
        res.update(padded_epoch_s=res["padded"]["epoch_s"], bs1_epoch_s=t_one,
                   speedup=t_one / res["padded"]["epoch_s"],
                   padded_over_ceiling=res["ratios"]["padded/ceiling"]["median"])
    if not args.no_stream:
        with tempfile.TemporaryDirectory(prefix="cellmil-bench-fit-", dir=args.dir) as tmp:
            store = Path(tmp) / "bench.h5"
            write_store(store, feats, args.dim)
            del feats
            res["stream"] = _peak(store, args, stream=True)
            res["preload"] = _peak(store, args, stream=False)
    res["load_avg_after"] = os.getloadavg()[0]
    return res


def _paired(ceiling: list[dict[str, float]], row: list[dict[str, float]], steps: int
            ) -> dict[str, Any]:
    """Per round: the ceiling's epoch time / the row's (1.0 = at the ceiling); their median."""
    rounds = [_per_epoch(c, steps) / _per_epoch(r, steps) for c, r in zip(ceiling, row, strict=True)]
    return {"median": float(np.median(rounds)), "rounds": rounds}


ROWS = {"ceiling": "(d) ceiling, dense float32", "padded": "(a) padded batches (cellmil)",
        "legacy": "(a0) padded, before issue 16", "compiled": "(ac) padded, torch.compile"}


def table(r: dict[str, Any]) -> str:
    lines = [f"fit epoch, {r['bags']} bags x {r['cells']} cells x {r['dim']} float16 in RAM, "
             f"{r['threads']} threads, {r.get('rounds', 1)} rounds, load "
             f"{r['load_avg_1min']:.1f} -> {r.get('load_avg_after', r['load_avg_1min']):.1f}"]
    for key, what in ROWS.items():
        if key in r:
            each = " ".join(f"{v:.2f}" for v in r[key]["rounds_epoch_s"])
            lines.append(f"  {what:31} {r[key]['epoch_s']:8.2f} s/epoch   (rounds: {each}; "
                         f"{r[key]['faults_per_step']:.0f} page faults/step)")
    if "speedup" in r:
        lines += [f"  {'(b) batch size 1 loop':31} {r['bs1_epoch_s']:8.2f} s/epoch",
                  f"  {'speedup (b)/(a)':31} {r['speedup']:8.1f} x"]
        for name, q in r["ratios"].items():
            lines.append(f"  {name:31} {q['median']:8.3f} x   (median of rounds: "
                         f"{' '.join(f'{v:.2f}' for v in q['rounds'])})")
    if "compile_s" in r:
        lines.append(f"  torch.compile: {r['compile_s']:.1f} s to compile (first two batches)")
    if "stream" in r:
        lines += [f"HDF5 store ({r['features_gb']:.2f} GB of features), one epoch per process:",
                  f"  --stream peak RSS: {r['stream']['peak_rss_mb']:8.0f} MB "
                  f"({r['stream']['epoch_s']:.1f} s/epoch)",
                  f"  preload  peak RSS: {r['preload']['peak_rss_mb']:8.0f} MB "
                  f"({r['preload']['epoch_s']:.1f} s/epoch)"]
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The README table's rows."""
    rows = []
    if "speedup" in r:
        parts = [f"{ROWS[k].split(')')[0]}) {r[k]['epoch_s']:.2f} s" for k in ROWS if k in r]
        ratios = ", ".join(f"{k} {v['median']:.2f} x" for k, v in r["ratios"].items())
        glibc = "" if r.get("malloc_tuned", True) else ", glibc's allocator defaults"
        rows.append((f"fit epoch, {r['bags']:,} bags x {r['cells']} x {r['dim']}, "
                     f"{r['rounds']} rounds of interleaved steps{glibc} (load "
                     f"{r['load_avg_1min']:.1f})",
                     f"{', '.join(parts)}; {ratios}; (b) batch-size-1 loop {r['bs1_epoch_s']:.2f} s "
                     f"({r['speedup']:.1f} x slower than (a))"))
    if "stream" in r:
        rows.append((f"fit, {r['features_gb']:.2f} GB of features in an HDF5 store, one epoch",
                     f"`--stream` peak RSS {r['stream']['peak_rss_mb'] / 1000:.2f} GB vs "
                     f"{r['preload']['peak_rss_mb'] / 1000:.2f} GB preloaded"))
    return rows
