"""``python -m mil.extract SOURCE OUT``: cell images -> frozen-backbone embeddings in a bag store.

    python -m mil.extract cells/ features/cohort.h5                  # folder per slide
    python -m mil.extract cells.csv features/cohort.zarr --workers 1   # CSV manifest
    python -m mil.extract cells/ features/cohort.h5 --devices 4        # DDP, one store

Batches run across slide boundaries (a flat, ordered dataset of all pending cells); a slide is
committed atomically as soon as its last cell is embedded, so a re-run resumes where a killed
run stopped and produces the same store. Unreadable images are skipped and listed per slide.
The resolved config is written beside the store as ``OUT.config.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mil.backbone import DEFAULT_BACKBONE
from mil.errors import CliError

log = logging.getLogger("mil.extract")
DELAY_ENV = "CELLMIL_EXTRACT_DELAY"  # test hook: seconds to sleep after each batch


@dataclass
class ExtractConfig:
    source: str = field(default="", metadata={"flag": False})
    out: str = field(default="", metadata={"flag": False})
    manifest: bool | None = field(default=None, metadata={
        "help": "SOURCE is a CSV manifest (default: when it ends in .csv)"})
    backbone: str = field(default=DEFAULT_BACKBONE, metadata={"help": "any timm model name"})
    weights: str = field(default="auto", metadata={
        "help": "auto | hub | none | PATH to a .pth/.safetensors", "metavar": "W"})
    image_size: int | None = field(default=None, metadata={
        "help": "input size in pixels (default: the backbone's)", "metavar": "N"})
    batch_size: int | None = field(default=None, metadata={
        "help": "cells per forward pass (default: 64 on the CPU, 128 on a GPU)", "metavar": "N"})
    workers: int | None = field(default=None, metadata={
        "help": "decoding processes; 0 = the main process decodes on its threads between "
                "forward passes (default: 0 on the CPU, min(8, CPUs - 1) with a GPU)"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (default: torch's choice)"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "device"})
    precision: Literal["auto", "32", "bf16", "16"] = field(default="auto", metadata={
        "help": "autocast: auto = bf16 on CUDA, 32 on CPU"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    devices: int = field(default=1, metadata={"help": "processes per node (DDP when > 1)"})
    num_nodes: int = field(default=1, metadata={"help": "machines (DDP, e.g. under SLURM)"})
    dtype: Literal["float16", "float32"] = field(default="float16", metadata={
        "help": "stored feature dtype"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a store made with other settings"})

    def validate(self) -> None:
        for name in ("batch_size", "devices", "num_nodes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CliError(f"--{name.replace('_', '-')} must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise CliError("--workers must be >= 0")
        if self.image_size is not None and self.image_size < 8:
            raise CliError("--image-size must be >= 8")


@dataclass
class Summary:
    slides: int = 0  # committed in this run
    skipped: int = 0  # already complete in the store
    all_failed: list[str] = field(default_factory=list)
    cells: int = 0
    failed: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0  # the embedding loop alone (no model build, no imports)

    def add(self, other: Summary) -> None:
        self.slides += other.slides
        self.all_failed += other.all_failed
        self.cells += other.cells
        self.failed += other.failed

    def line(self, out: str) -> str:
        rate = self.cells / self.seconds if self.seconds > 0 else 0.0
        text = (f"extracted {_n(self.slides, 'slide')}, {_n(self.cells, 'cell')} ({self.failed} failed) "
                f"in {self.seconds:.1f} s = {rate:.1f} cells/s -> {out}")
        if self.skipped:
            text += f"; {_n(self.skipped, 'slide')} already complete"
        if self.all_failed:
            text += (f"; {_n(len(self.all_failed), 'slide')} left out, every cell failed: "
                     + ", ".join(self.all_failed[:5]) + (" ..." if len(self.all_failed) > 5 else ""))
        return text


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def config_path(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name + ".config.yaml")


def default_workers(processes: int = 1, device_type: str = "cpu") -> int:
    """Decoding worker processes per extraction process (``processes`` share the CPUs).

    On the CPU: none. The main process decodes each batch on all its threads between forward
    passes; background workers would take cores from the model's threads mid-pass, and a
    data-parallel pass with one thread delayed waits for it (measured in ``mil.bench extract``).
    With a GPU the CPUs are free while it computes: up to 8 workers, one CPU left for the loop.
    """
    if device_type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus // processes - 1))


def default_batch_size(device_type: str) -> int:
    """64 on the CPU (``mil.bench extract``: 128 is ~25% slower there, 16-64 alike), 128 on GPU."""
    return 128 if device_type == "cuda" else 64


def runtime(cfg: ExtractConfig, device_type: str) -> tuple[int, int]:
    """(batch size, workers): the config's, or the device's defaults where unset."""
    workers = default_workers(cfg.devices, device_type) if cfg.workers is None else cfg.workers
    return cfg.batch_size or default_batch_size(device_type), workers


def resolve_runtime(cfg: ExtractConfig, device_type: str) -> ExtractConfig:
    """``cfg`` with the device-dependent defaults (batch size, workers) filled in."""
    batch_size, workers = runtime(cfg, device_type)
    return replace(cfg, batch_size=batch_size, workers=workers)


def store_attrs(bb: Any, cfg: ExtractConfig) -> dict[str, Any]:
    """Root attributes: the backbone's provenance, dtype, versions and the config."""
    import numpy
    import PIL
    import timm
    import torch

    from mil import __version__
    from mil.config import config_dict

    versions = {"cellmil": __version__, "torch": torch.__version__, "timm": timm.__version__,
                "pillow": PIL.__version__, "numpy": numpy.__version__,
                "python": sys.version.split()[0]}
    return {**bb.attrs(), "dtype": cfg.dtype, "versions": versions, "config": config_dict(cfg)}


# -- the embedding loop -------------------------------------------------------------------------
class SlideSink:
    """Accumulates per-cell results and commits each slide once all its cells are done."""

    def __init__(self, store: Any, cohort: Any, slide_ids: list[str], dim: int, dtype: str):
        import numpy as np

        self.store, self.cohort, self.dim, self.dtype = store, cohort, dim, dtype
        self.cells = [c for sid in slide_ids for c in cohort.slides[sid]]
        self.slide_of = np.repeat(np.arange(len(slide_ids)), [len(cohort.slides[s]) for s in slide_ids])
        starts = np.cumsum([0] + [len(cohort.slides[s]) for s in slide_ids])
        self.ids, self.starts = slide_ids, starts
        self.left = np.diff(starts)
        self.bufs: dict[int, Any] = {}
        self.summary = Summary()

    def put(self, index: Any, feats: Any, ok: Any) -> None:
        """index (B,) flat cell indices; feats (B, D) float32 (rows of failed cells ignored)."""
        import numpy as np

        for s in np.unique(self.slide_of[index]):
            rows = self.slide_of[index] == s
            if s not in self.bufs:
                n = self.left[s]
                self.bufs[s] = (np.zeros((n, self.dim), np.float32), np.zeros(n, bool))
            buf, okb = self.bufs[s]
            local = index[rows] - self.starts[s]
            buf[local], okb[local] = feats[rows], ok[rows]
            self.left[s] -= rows.sum()
            if self.left[s] == 0:
                self._commit(int(s))

    def _commit(self, s: int) -> None:
        import numpy as np

        buf, okb = self.bufs.pop(s)
        sid, cells = self.ids[s], self.cohort.slides[self.ids[s]]
        failed = [c.rel_path for c, good in zip(cells, okb, strict=True) if not good]
        self.summary.failed += len(failed)
        if not okb.any():
            log.warning("slide '%s': all %d cells failed to load; left out", sid, len(cells))
            self.summary.all_failed.append(sid)
            return
        kept = [c for c, good in zip(cells, okb, strict=True) if good]
        coords = (np.array([[c.x, c.y] for c in kept], np.float32)
                  if self.cohort.has_coords else None)
        self.store.write_slide(sid, buf[okb].astype(self.dtype), [c.cell_id for c in kept],
                               [c.rel_path for c in kept], coords=coords, failed=failed)
        self.summary.slides += 1
        self.summary.cells += len(kept)


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> bf16 on CUDA, 32 elsewhere; any other value as given."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "32"
    return precision


def autocast(device: Any, precision: str) -> Any:
    import torch

    precision = resolve_precision(precision, device.type)
    if precision == "32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def embed(bb: Any, sink: SlideSink, cfg: ExtractConfig, device: Any, progress: bool) -> None:
    """Run every cell of ``sink`` through the backbone, committing slides as they complete."""
    import torch
    from tqdm import tqdm

    from mil.allocator import keep_freed_memory
    from mil.extract_data import CellImages, make_loader, normalise

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    model = bb.model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_size, workers = runtime(cfg, device.type)
    ds = CellImages([str(c.path) for c in sink.cells], bb.image_size, bb.interpolation,
                    threads=torch.get_num_threads() if workers == 0 else 1)
    loader = make_loader(ds, batch_size, workers, pin_memory=device.type == "cuda")
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    bar = tqdm(total=len(ds), unit="cell", disable=None if progress else True, dynamic_ncols=True,
               smoothing=0.1, file=sys.stderr)
    with torch.inference_mode(), bar:
        for index, x, ok in loader:  # index (B,), x (B, 3, S, S) uint8 channels_last, ok (B,)
            feats = torch.zeros(len(index), bb.feature_dim)  # (B, D)
            if ok.any():
                xb = x.to(device, non_blocking=True)  # pinned on CUDA: an async copy
                if not ok.all():
                    xb = xb[ok.to(device)]
                xb = normalise(xb, bb.mean, bb.std)
                if not cfg.channels_last:
                    xb = xb.contiguous()
                with autocast(device, cfg.precision):
                    feats[ok] = model(xb).float().cpu()
            sink.put(index.numpy(), feats.numpy(), ok.numpy())
            bar.update(len(index))
            if delay:
                time.sleep(delay)


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda, but no CUDA device is available")
    return torch.device(name)


def extract(cfg: ExtractConfig, progress: bool = True) -> Summary:
    """The single-process extraction (see :mod:`mil.extract_ddp` for several processes)."""
    from mil.backbone import build_backbone
    from mil.config import save_config
    from mil.sources import find_cells
    from mil.store import backend_of, open_store

    backend_of(cfg.out)
    cohort = find_cells(cfg.source, cfg.manifest)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg = resolve_runtime(cfg, device.type)  # the saved config says what ran
    bb = build_backbone(cfg.backbone, cfg.weights, cfg.image_size)
    with open_store(cfg.out, "a") as store:
        store.init(store_attrs(bb, cfg), overwrite=cfg.overwrite)
        save_config(cfg, config_path(cfg.out))
        done = set(store.slides())
        pending = [s for s in cohort.slides if s not in done]
        log.info("%s: %d slides, %d cells; %d slides already complete, %d to do",
                 cfg.source, len(cohort.slides), cohort.n_cells(), len(done & set(cohort.slides)),
                 len(pending))
        sink = SlideSink(store, cohort, pending, bb.feature_dim, cfg.dtype)
        t1 = time.perf_counter()
        embed(bb, sink, cfg, device, progress)
    summary = sink.summary
    summary.embed_seconds = time.perf_counter() - t1
    summary.skipped = len(cohort.slides) - len(pending)
    summary.seconds = time.perf_counter() - t0
    return summary


# -- CLI ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from mil.config import add_config_arguments

    p = argparse.ArgumentParser(prog="python -m mil.extract", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder with one sub-folder per slide, or a CSV manifest")
    p.add_argument("out", help="bag store to write: NAME.h5 or NAME.zarr")
    p.add_argument("--config", metavar="FILE.yaml", help="options from a YAML file; flags win")
    add_config_arguments(p, ExtractConfig)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    from mil.cli import run_cli, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        from mil.config import resolve_config

        cfg = resolve_config(ExtractConfig, args)
        if cfg.devices * cfg.num_nodes > 1:
            from mil.extract_ddp import extract_ddp

            summary = extract_ddp(cfg, progress=not args.quiet)
            if summary is None:  # not rank 0
                return 0
        else:
            summary = extract(cfg, progress=not args.quiet)
        print(summary.line(cfg.out))
        return 0

    return run_cli(body, "mil.extract")


if __name__ == "__main__":
    sys.exit(main())
