"""One timed training epoch and the loaders and processes the fit benchmarks time it on
(shared by ``mil.bench fit``, ``scale`` and ``gpu``).

An epoch is the training step of ``mil.fit`` without Lightning around it: forward, cross
entropy, backward, AdamW step, per batch. Batches come from the training path's own pieces
(:class:`mil.train.data.BagDataModule`'s loader, or :func:`mil.train.data.collate_bags`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = ("32", "bf16")


def make_model(dim: int, classes: int, seed: int = 0) -> Any:
    """The default gated-attention MIL model (hidden 128, attention 128, dropout 0.25)."""
    import torch

    from mil.train.model import MILClassifier

    torch.manual_seed(seed)
    return MILClassifier(dim, classes, hidden=128, attn_hidden=128, dropout=0.25)


def _stepper(model: Any, device: Any, precision: str) -> Any:
    """A function training ``model`` on one batch (forward, loss, backward, AdamW step)."""
    import torch
    import torch.nn.functional as F

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: dict[str, Any]) -> None:
        feats = batch["feats"].to(device, non_blocking=True)  # (B, N, D)
        mask = batch["mask"].to(device, non_blocking=True)  # (B, N)
        label = batch["label"].to(device, non_blocking=True)  # (B,)
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            out = model(feats, mask)
            loss = F.cross_entropy(out.logits.float(), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved(rows: dict[str, tuple[Any, Iterable[dict[str, Any]]]], device: Any = None,
                precision: str = "32", warmup: int = 1) -> dict[str, dict[str, float]]:
    """Train each row's model one epoch over its batches, the rows' steps interleaved (a step
    of each in turn), so a shared machine's slow and fast spells fall on every row alike.

    A row's time is its own steps': fetching the batch from its loader (collate, cast) and
    the training step. The first ``warmup`` batches of each row are not timed (kernels chosen,
    buffers allocated). ``device`` (default CPU): batches move there (non-blocking from pinned
    memory) inside the clock; ``precision`` ``bf16`` runs the steps under bf16 autocast.
    Returns per row: seconds, timed steps, minor page faults per step.
    """
    import torch

    device = torch.device(device or "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    live = {name: (_stepper(model, device, precision), iter(batches))
            for name, (model, batches) in rows.items()}
    for step, it in live.values():
        for _ in range(warmup):
            step(next(it))
    sync()
    res = {name: {"seconds": 0.0, "steps": 0, "faults": 0} for name in live}
    while live:
        for name, (step, it) in list(live.items()):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            batch = next(it, None)
            if batch is None:
                del live[name]
                continue
            step(batch)
            sync()
            r = res[name]
            r["seconds"] += time.perf_counter() - t0
            r["faults"] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            r["steps"] += 1
    return {name: {"seconds": r["seconds"], "steps": r["steps"],
                   "faults_per_step": r["faults"] / max(r["steps"], 1)} for name, r in res.items()}


def epoch(model: Any, batches: Iterable[dict[str, Any]], device: Any = None,
          precision: str = "32", warmup: int = 0) -> dict[str, float]:
    """One row of :func:`interleaved`: ``model`` one epoch over ``batches``."""
    return interleaved({"row": (model, batches)}, device, precision, warmup)["row"]


class RamSource:
    """A :class:`mil.train.data.BagSource` stand-in over an in-RAM float16 array (B, N, D),
    as ``BagSource`` preloads it."""

    def __init__(self, feats: np.ndarray) -> None:
        self.feats = feats
        self.length = {str(i): feats.shape[1] for i in range(feats.shape[0])}

    def get(self, sid: str, pick: Any = None) -> tuple[np.ndarray, None]:
        return self.feats[int(sid)], None


def train_loader(source: Any, ids: list[str], labels: list[int], batch_size: int,
                 path: str = "cpu", pin: bool = False) -> Any:
    """The training loader of ``mil.fit`` (length-bucketed, class-balanced padded batches),
    collated as ``mil.fit`` does on the CPU (``path="cpu"``: float32, one copy thread), on a
    GPU (``"gpu"``: float16) or before issue 16 (``"legacy"``: float16, the torch threads)."""
    from mil.train.config import FitConfig
    from mil.train.data import BagDataModule
    from mil.train.trainer import batch_dtype, copy_threads

    cfg = FitConfig(accelerator="gpu" if path == "gpu" else "cpu")
    dtype, threads = (None, None) if path == "legacy" else (batch_dtype(cfg), copy_threads(cfg))
    dm = BagDataModule(source, dict(zip(ids, labels, strict=True)), ids, [],
                       batch_size=batch_size, feature_dtype=dtype, copy_threads=threads)
    loader = dm.train_dataloader()
    loader.pin_memory = pin
    return loader


def single_loader(source: Any, ids: list[str], labels: list[int], pin: bool = False) -> Any:
    """The batch-size-1 loop (how CLAM and SCEMILA train): float16 bags, cast in the model."""
    from torch.utils.data import DataLoader

    from mil.train.data import BagDataset, collate_bags

    ds = BagDataset(source, ids, labels, train=True)
    return DataLoader(ds, batch_size=1, shuffle=True, collate_fn=collate_bags, pin_memory=pin)


def dense_batches(dense: Any, labels: Any, batch_size: int, steps: int) -> Iterator[dict[str, Any]]:
    """(d) the ceiling's batches: views of one pre-cast float32 tensor, all cells real."""
    import torch

    mask = torch.ones(batch_size, dense.shape[1], dtype=torch.bool)  # (B, N)
    for s in range(steps):
        i = (s * batch_size) % max(len(dense) - batch_size + 1, 1)
        yield {"feats": dense[i:i + batch_size], "mask": mask[:len(dense[i:i + batch_size])],
               "label": labels[i:i + batch_size]}


def peak_rss_mb() -> float:
    """Peak resident memory of this process: VmHWM (reset by exec, unlike ``ru_maxrss``, which
    Linux seeds at exec with the parent's peak), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_epoch(store: str, batch_size: int, classes: int, stream: bool) -> None:
    """Subprocess body: one epoch from ``store`` as ``mil.fit`` trains on the CPU; prints peak
    RSS and the epoch time (per-step time of all but the first batch x steps) as JSON."""

    from mil.allocator import keep_freed_memory
    from mil.store import open_store
    from mil.train.data import BagSource

    if not stream:
        keep_freed_memory()  # as mil.fit does on the CPU when it does not stream
    ids = open_store(store).slides()
    labels = [i % classes for i in range(len(ids))]
    source = BagSource(store, ids, stream=stream)
    loader = train_loader(source, ids, labels, batch_size)
    steps = len(loader)
    res = epoch(make_model(source.feature_dim, classes), loader, warmup=1 if steps > 1 else 0)
    per_step = res["seconds"] / max(res["steps"], 1)  # the first batch warms up, untimed
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "epoch_s": per_step * steps,
                      "steps": steps}))


def run_child(code: str, threads: int = 0) -> dict[str, Any]:
    """Run ``python -c code`` in a fresh process; its last stdout line (JSON), plus that
    child's own ``getrusage`` (``os.wait4``): ``ru_maxrss_mb`` and ``cpu_s``."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"benchmark child failed ({proc.returncode}): "
                               f"{err.read().strip()[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["ru_maxrss_mb"] = usage.ru_maxrss / 1024
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    return res
