"""Extraction over several processes or machines with Lightning Fabric (DDP).

``--devices N --num-nodes M`` start ``N`` processes per machine the way Lightning does (it
re-runs the command for the extra local ranks; under SLURM or ``torchrun`` it joins the
existing processes). Rank 0 checks the store and merges any parts a killed run left; every
rank then takes a disjoint, cell-balanced share of the pending slides and writes its own part
store ``OUT.parts/rank-NNNNN.<suffix>``; rank 0 finally copies the parts into ``OUT`` and
deletes them. ``OUT`` must be on a file system every machine sees.

The result is the same single store a one-process run writes (same slides, ids, paths; features
equal to float tolerance, since batches are composed differently).
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning_fabric import Fabric
from lightning_fabric.strategies import DDPStrategy

from mil.config import save_config
from mil.errors import CliError
from mil.extract.backbone import build_backbone
from mil.extract.config import ExtractConfig, config_path, resolve_runtime
from mil.extract.engine import torch_record
from mil.extract.fingerprint import scan_inputs
from mil.extract.pipeline import embed, log, resolve_device, resolve_precision, store_attrs
from mil.extract.resume import ResumePlan, finish, plan_resume
from mil.extract.sink import SlideSink, Summary
from mil.extract.sources import find_cells
from mil.outputs import require_writable
from mil.store import backend_of, open_store


def parts_dir(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name + ".parts")


def assign(slide_ids: list[str], sizes: dict[str, int], world: int) -> list[list[str]]:
    """Disjoint shares with about equal cell counts (largest slides first, to the lightest)."""
    shares: list[list[str]] = [[] for _ in range(world)]
    load = [0] * world
    for sid in sorted(slide_ids, key=lambda s: (-sizes[s], s)):
        r = load.index(min(load))
        shares[r].append(sid)
        load[r] += sizes[sid]
    order = {s: i for i, s in enumerate(slide_ids)}
    return [sorted(share, key=order.__getitem__) for share in shares]


def merge_parts(store: Any, out: str | Path) -> int:
    """Copy every complete slide of the part stores into ``store``; delete the parts."""
    folder = parts_dir(out)
    if not folder.exists():
        return 0
    n = 0
    for part in sorted(folder.glob("rank-*")):
        try:
            src = open_store(part, "r")
        except CliError:  # a part killed before its first write: nothing to keep
            continue
        with src:
            for sid in src.slides():
                bag = src.read(sid)
                attrs = {k: v for k, v in src.slide_attrs(sid).items()
                         if k not in ("slide_id", "n_cells", "n_failed", "written")}
                store.write_slide(sid, bag.features, bag.cell_ids, bag.paths, coords=bag.coords,
                                  failed=src.strings(sid, "failed"), attrs=attrs,
                                  failed_reason=src.strings(sid, "failed_reason"))
                n += 1
    shutil.rmtree(folder)
    return n


def _prepare(cfg: ExtractConfig, attrs: dict[str, Any], cohort: Any, inputs: Any) -> ResumePlan:
    """Rank 0: check/stamp the store, recover a killed run's parts; what is left to do."""
    with open_store(cfg.out, "a") as store:
        store.init(attrs, overwrite=cfg.overwrite)
        recovered = merge_parts(store, cfg.out)
        if recovered:
            log.info("recovered %d slides from an interrupted run", recovered)
        save_config(cfg, config_path(cfg.out))
        return plan_resume(store, cohort, inputs, cfg.overwrite)


def extract_ddp(cfg: ExtractConfig, progress: bool = True) -> Summary | None:
    """Run on every rank; returns the merged summary on rank 0 and None elsewhere."""
    backend_of(cfg.out)
    require_writable(cfg.out, "bag store")
    cohort = find_cells(cfg.source, cfg.manifest)  # user errors surface before any launch
    inputs = scan_inputs(cohort, cfg.source)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg = resolve_runtime(cfg, device.type)  # the saved config says what ran
    fabric = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=cfg.devices,
                    num_nodes=cfg.num_nodes, strategy=DDPStrategy(timeout=timedelta(days=2)))
    fabric.launch()  # early, so that the ranks import timm and build the model in parallel
    rank, world = fabric.global_rank, fabric.world_size
    try:
        bb = build_backbone(cfg.backbone, cfg.weights, cfg.image_size)  # the same on every rank
    except CliError:
        if rank == 0:
            raise
        raise SystemExit(2) from None  # rank 0 reports it
    attrs = store_attrs(bb, cfg, torch_record(resolve_precision(cfg.precision, device.type)))
    status: tuple[str, Any] = ("ok", None)
    if rank == 0:
        try:
            status = ("ok", _prepare(cfg, attrs, cohort, inputs))
        except CliError as err:
            status = ("error", str(err))
    status = fabric.broadcast(status, src=0)
    if status[0] == "error":
        if rank == 0:
            raise CliError(status[1])
        raise SystemExit(2)
    plan: ResumePlan = status[1]
    pending = plan.pending
    mine = assign(pending, {s: len(cohort.slides[s]) for s in pending}, world)[rank]
    folder = parts_dir(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    with open_store(folder / f"rank-{rank:05d}{Path(cfg.out).suffix}", "a") as part:
        part.init(attrs, overwrite=True)
        sink = SlideSink(part, cohort, mine, bb.feature_dim, cfg.dtype, inputs)
        embed(bb, sink, cfg, fabric.device, progress and rank == 0)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, sink.summary)
    fabric.barrier()
    if rank != 0:
        return None
    summary = Summary()
    for s in gathered:
        summary.add(s)
    with open_store(cfg.out, "a") as store:
        merge_parts(store, cfg.out)
        finish(store, summary, cohort, plan, cfg.source)
    summary.seconds = time.perf_counter() - t0
    return summary
