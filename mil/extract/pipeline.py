"""The extraction pipeline: cell images -> frozen-backbone embeddings in a bag store.

Batches run across slide boundaries (a flat, ordered dataset of all pending cells); each slide is
committed by :class:`mil.extract.sink.SlideSink` as soon as its last cell is embedded (the
command and its resume rules: :mod:`mil.extract.cli`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import nullcontext
from typing import Any

import numpy
import PIL
import timm
import torch
from tqdm import tqdm

from mil import __version__
from mil.allocator import keep_freed_memory
from mil.config import config_dict, save_config
from mil.errors import CliError
from mil.extract.backbone import build_backbone
from mil.extract.config import DELAY_ENV, ExtractConfig, config_path, resolve_runtime, runtime
from mil.extract.engine import TorchEngine, build_engine
from mil.extract.fingerprint import scan_inputs
from mil.extract.images import CellImages, make_loader
from mil.extract.resume import finish, plan_resume
from mil.extract.sink import SlideSink, Summary
from mil.extract.sources import find_cells
from mil.extract.stain import build_normaliser, stain_record
from mil.outputs import require_writable
from mil.store import backend_of, open_store

log = logging.getLogger("mil.extract")


def store_attrs(bb: Any, cfg: ExtractConfig, engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """Root attributes: the backbone's and engine's provenance, dtype, versions and the config."""
    versions = {"cellmil": __version__, "torch": torch.__version__, "timm": timm.__version__,
                "pillow": PIL.__version__, "numpy": numpy.__version__,
                "python": sys.version.split()[0]}
    return {**bb.attrs(), **(engine or {}), "dtype": cfg.dtype, "stain_norm": stain_record(cfg.stain_norm),
            "versions": versions, "config": config_dict(cfg)}


# -- the embedding loop -------------------------------------------------------------------------
def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> bf16 on CUDA, 32 elsewhere; any other value as given."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "32"
    return precision


def autocast(device: Any, precision: str) -> Any:
    precision = resolve_precision(precision, device.type)
    if precision == "32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def embed(bb: Any, sink: SlideSink, cfg: ExtractConfig, device: Any, progress: bool,
          engine: Any = None) -> None:
    """Run every cell of ``sink`` through ``engine`` (default: PyTorch), committing slides as
    they complete. The next batch decodes while a compiled engine computes this one."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()
    engine = engine or TorchEngine(bb, device, resolve_precision(cfg.precision, device.type),
                                   cfg.channels_last)
    threads, compiled = torch.get_num_threads(), engine.name != "torch"
    if compiled:
        torch.set_num_threads(1)  # torch only resizes now, one image per decoding thread
    loader = cell_loader(bb, cfg, sink.cells, device, compiled, threads)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    bar = tqdm(total=len(sink.cells), unit="cell", disable=None if progress else True, dynamic_ncols=True,
               smoothing=0.1, file=sys.stderr)

    def finish(index: Any, ok: Any, job: Any) -> None:
        feats = torch.zeros(len(index), bb.feature_dim)  # (B, D)
        if job is not None:
            feats[ok] = job.result()
        sink.put(index.numpy(), feats.numpy(), ok.numpy())
        bar.update(len(index))
        if delay:
            time.sleep(delay)

    pending = None
    try:
        with bar:
            for index, x, ok in loader:  # index (B,), x (B, 3, S, S) uint8 channels_last, ok (B,)
                job = engine.submit(x if ok.all() else x[ok]) if ok.any() else None
                if pending:
                    finish(*pending)
                pending = (index, ok, job)
            if pending:
                finish(*pending)
    finally:
        engine.close()
        torch.set_num_threads(threads)


def cell_loader(bb: Any, cfg: ExtractConfig, cells: list[Any], device: Any, compiled: bool,
                threads: int) -> Any:
    """The ordered loader of ``cells`` (objects with ``path`` and ``slide_id``) as the embedding
    loop reads them: decoded on ``threads`` threads (or worker processes), stain-normalised,
    resized per image beside a ``compiled`` engine, uint8 batches."""
    batch_size, workers = runtime(cfg, device.type)
    ds = CellImages([str(c.path) for c in cells], bb.image_size, bb.interpolation,
                    threads=threads if workers == 0 else 1, resize_each=compiled,
                    stain=build_normaliser(cfg.stain_norm, cells))
    return make_loader(ds, batch_size, workers, pin_memory=device.type == "cuda")


def resolve_device(name: str) -> Any:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda, but no CUDA device is available")
    return torch.device(name)


def extract(cfg: ExtractConfig, progress: bool = True) -> Summary:
    """The single-process extraction (see :mod:`mil.extract.ddp` for several processes)."""
    backend_of(cfg.out)
    require_writable(cfg.out, "bag store")
    cohort = find_cells(cfg.source, cfg.manifest)
    inputs = scan_inputs(cohort, cfg.source)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg = resolve_runtime(cfg, device.type)  # the saved config says what ran
    bb = build_backbone(cfg.backbone, cfg.weights, cfg.image_size)
    with open_store(cfg.out, "a") as store:
        store.check_compatible(store_attrs(bb, cfg), cfg.overwrite)  # before any conversion
        flat = [c for cells in cohort.slides.values() for c in cells]
        engine = build_engine(bb, cfg, device, [str(c.path) for c in flat], cfg.out,
                              [c.slide_id for c in flat])
        store.init(store_attrs(bb, cfg, engine.record), overwrite=cfg.overwrite)
        save_config(cfg, config_path(cfg.out))
        plan = plan_resume(store, cohort, inputs, cfg.overwrite)
        sink = SlideSink(store, cohort, plan.pending, bb.feature_dim, cfg.dtype, inputs)
        t1 = time.perf_counter()
        embed(bb, sink, cfg, device, progress, engine)
        summary = sink.summary
        summary.embed_seconds = time.perf_counter() - t1
        finish(store, summary, cohort, plan, cfg.source)
    summary.seconds = time.perf_counter() - t0
    return summary
