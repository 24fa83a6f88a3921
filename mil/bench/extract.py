"""``python -m mil.bench extract``: how close extraction from files gets to the model's ceiling.

Numbers in cells/s, same backbone, batch size, threads and allocator settings:

(a) ceiling: the PyTorch forward pass on a batch already in memory (channels_last and
    precision as configured), over as many cells as (b);
(e) engine ceiling: the engine ``mil.extract`` runs (``--engine``, default auto: OpenVINO on
    the CPU when installed) on the same in-memory batch, as the loader hands it over (uint8);
(b) cellmil: ``mil.extract`` end to end with that engine from 400x400 JPEG files (decode,
    stain normalisation as configured, default ``od-slide``, batches across slides, atomic
    per-slide commits to an HDF5 store); (bn) the same with ``--stain-norm none``; with
    ``--serial-too`` also (b0), without decoding the next batch during the forward pass;
(c) naive: the loop of typical extract scripts: one process, per slide open + timm transform
    each image, forward, write.
``--int8`` adds (e8) and (b8): the engine quantised to int8 (calibrated on the benchmark's
cells), its ceiling and end to end, and the int8 features' cosine to fp32's.

(a), (e), (b) alternate for ``--rounds`` short rounds, so that a shared machine's slow and fast
spells (on this project's VM the same forward pass ran anywhere from 28 to 81 cells/s within an
hour) fall on both. The headline (b)/(a) is the median of the per-round ratios (each pair
measured back to back); (a) and (b) alone are the best of their rounds (a neighbour only ever
slows a round down), and their ratio is printed too. Cell images are copied (cycled) from ``--images`` (default:
the matek myeloblast JPEGs when present) or generated from noise and ellipses.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mil.extract.stain import STAIN_NORMS

MATEK = Path(__file__).resolve().parents[3] / "shared" / "data" / "matek_lmu" / "myeloblast"


HELP = "extraction throughput: PyTorch and engine ceilings vs cellmil vs naive loop"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="none", help="as for mil.extract (speed only: none)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--cells", type=int, default=256, help="cells per round")
    p.add_argument("--cells-per-slide", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=None, help="as mil.extract (default: its)")
    p.add_argument("--workers", type=int, default=None, help="decoding workers (mil.extract's default)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of (a) and (b)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--precision", default="auto", choices=["auto", "32", "bf16", "16"],
                   help="as mil.extract: auto = bf16 on CUDA, 32 on the CPU")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--images", default=None, help="folder of JPEGs to copy (default: matek or noise)")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "openvino", "onnxruntime"],
                   help="as mil.extract (default auto)")
    p.add_argument("--stain-norm", default=None, choices=list(STAIN_NORMS),
                   help="as mil.extract (default: its); (bn) is always none")
    p.add_argument("--int8", action="store_true", help="also the engine at int8 (OpenVINO)")
    p.add_argument("--serial-too", action="store_true",
                   help="also cellmil without overlapping decode and forward")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--dir", default=None, help="work folder (default: a temp dir, removed)")


def options(**over: Any) -> argparse.Namespace:
    """This benchmark's options: its defaults, with ``over`` (for the benchmarks that reuse it)."""
    p = argparse.ArgumentParser()
    arguments(p)
    opts = p.parse_args([])
    unknown = set(over) - set(vars(opts))
    if unknown:
        raise TypeError(f"not options of mil.bench extract: {sorted(unknown)}")
    vars(opts).update(over)
    return opts


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


class Ceiling:
    """(a) the backbone's forward throughput on one in-memory batch, on the run's device."""

    def __init__(self, bb: Any, args: argparse.Namespace, device: Any):
        import torch

        self.device, self.args, self.bb = device, args, bb
        self.model = bb.model.to(device)
        self.x = torch.randn(args.batch_size, 3, bb.image_size, bb.image_size,
                             device=device)  # (B, 3, S, S)
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.ref = self._forward(1)  # warm-up: kernels chosen, buffers allocated  (B, D)

    def _forward(self, batches: int) -> Any:
        import torch

        from mil.extract.pipeline import autocast

        with torch.inference_mode(), autocast(self.device, self.args.precision):
            for _ in range(batches):
                out = self.model(self.x)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        return out.float()

    def round(self, cells: int) -> float:
        """cells/s over ``cells`` cells (rounded up to whole batches)."""
        batches = -(-cells // self.args.batch_size)
        t = time.perf_counter()
        self._forward(batches)
        return batches * self.args.batch_size / (time.perf_counter() - t)

    def engine_reference(self, x: Any) -> Any:
        """fp32 PyTorch features of uint8 cells x (B, 3, S, S): what an engine must reproduce."""
        from mil.extract.engine import TorchEngine

        return TorchEngine(self.bb, self.device, "32", self.args.channels_last)(x)  # (B, D)

    def cosine_vs_fp32(self) -> float | None:
        """Reduced precision only: the lowest cosine of its features to fp32's."""
        import torch

        if self.args.precision == "32":
            return None
        with torch.inference_mode():
            fp32 = self.model(self.x)
        return float(torch.nn.functional.cosine_similarity(self.ref, fp32.float()).min())


def extract_config(src: Path, out: Path, args: argparse.Namespace, **over: Any) -> Any:
    from mil.extract.config import ExtractConfig

    cfg = ExtractConfig(source=str(src), out=str(out), backbone=args.backbone,
                        weights=args.weights, image_size=args.image_size,
                        batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                        precision=args.precision, channels_last=args.channels_last,
                        device=args.device, engine=args.engine)
    if getattr(args, "stain_norm", None):
        over.setdefault("stain_norm", args.stain_norm)
    return replace(cfg, **over)


class EngineCeiling:
    """(e) the extraction engine alone on one in-memory uint8 batch (converted, cached in ``out``)."""

    def __init__(self, bb: Any, cfg: Any, device: Any, paths: list[str], x: Any):
        from mil.extract.engine import build_engine

        slides = [Path(p).parent.name for p in paths]  # folder layout: ROOT/<slide>/cell.jpg
        # the model (b) will run: calibrated as mil.extract calibrates, cached where it looks
        self.engine = build_engine(bb, cfg, device, paths, cfg.out, slides)
        self.x = x  # (B, 3, S, S) uint8, channels_last
        self.engine(self.x)  # warm-up

    def round(self, cells: int) -> float:
        batches = -(-cells // len(self.x))
        t = time.perf_counter()
        for _ in range(batches):
            self.engine(self.x)
        return batches * len(self.x) / (time.perf_counter() - t)


def cellmil(src: Path, out: Path, args: argparse.Namespace, **over: Any) -> dict[str, float]:
    """(b) mil.extract end to end into a fresh store (the model build is not timed; a converted
    engine model cached beside ``out`` is reused)."""
    from mil.extract.pipeline import extract

    if out.is_dir():  # a zarr store
        shutil.rmtree(out)
    out.unlink(missing_ok=True)
    s = extract(extract_config(src, out, args, **over), progress=False)
    return {"cells_per_s": s.cells / s.embed_seconds, "seconds": s.embed_seconds,
            "cells": s.cells}


def decode_round(src: Path, args: argparse.Namespace, bb: Any, device: Any, compiled: bool) -> float:
    """(x) everything the embedding loop does but the forward: its loader (decode, stain
    normalisation, resize) over the same files, on the same threads; cells/s."""
    from types import SimpleNamespace

    import torch

    from mil.extract.pipeline import cell_loader

    cells = [SimpleNamespace(path=p, slide_id=p.parent.name) for p in sorted(src.rglob("*.jpg"))]
    threads = torch.get_num_threads()
    if compiled:
        torch.set_num_threads(1)  # as the embedding loop beside a compiled engine
    try:
        t, n = time.perf_counter(), 0
        for index, _, _ in cell_loader(bb, extract_config(src, src, args), cells, device,
                                       compiled, threads):
            n += len(index)
        return n / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)


def serial_bound(engine: list[float], decode: list[float]) -> list[float]:
    """Per round, the end-to-end rate when forward and loader share the cores without loss:
    each cell costs the engine's time plus the loader's, ``1 / (1/e + 1/x)``."""
    return [1.0 / (1.0 / e + 1.0 / x) for e, x in zip(engine, decode, strict=True)]


def naive(bb: Any, src: Path, out: Path, args: argparse.Namespace, device: Any) -> dict[str, float]:
    """(c) one process: per slide, open + transform each image, forward in batches, write."""
    import h5py
    import torch
    from PIL import Image

    from mil.extract.backbone import timm_transform

    tf = timm_transform(bb)
    model = bb.model.to(device, memory_format=torch.contiguous_format)
    n = 0
    t = time.perf_counter()
    with h5py.File(out, "w") as f, torch.inference_mode():
        for slide in sorted(p for p in src.iterdir() if p.is_dir()):
            files = sorted(slide.glob("*.jpg"))
            feats = []
            for i in range(0, len(files), args.batch_size):
                x = torch.stack([tf(Image.open(p).convert("RGB")) for p in files[i:i + args.batch_size]])
                feats.append(model(x.to(device)).cpu().numpy())
            f.create_dataset(slide.name, data=np.concatenate(feats).astype(np.float16))
            n += len(files)
    secs = time.perf_counter() - t
    return {"cells_per_s": n / secs, "seconds": secs}


RATIOS = [("cellmil", "ceiling"), ("engine_ceiling", "ceiling"), ("cellmil", "engine_ceiling"),
          ("cellmil_plain", "engine_ceiling"), ("cellmil", "cellmil_plain"),
          ("cellmil_serial", "engine_ceiling"), ("int8_ceiling", "ceiling"),
          ("int8_cellmil", "ceiling"), ("int8_cellmil", "int8_ceiling")]
ROWS = {"ceiling": "(a) PyTorch ceiling, in memory", "engine_ceiling": "(e) engine ceiling, in memory",
        "cellmil": "(b) cellmil, files -> store", "cellmil_plain": "(bn) same, no stain norm",
        "cellmil_serial": "(b0) same, decode not overlapped",
        "int8_ceiling": "(e8) int8 engine ceiling", "int8_cellmil": "(b8) cellmil int8, files -> store",
        "decode": "(x) loader only, no forward", "serial_bound": "(s) bound 1/(1/e + 1/x)",
        "naive": "(c) naive loop, files -> h5"}


def _paired(b: list[float], a: list[float]) -> dict[str, Any]:
    rounds = [y / x for x, y in zip(a, b, strict=True)]
    return {"median": float(np.median(rounds)), "rounds": rounds}


def _rate(run: dict[str, float], info: dict[str, Any]) -> float:
    info["cells_extracted"] = run["cells"]
    return run["cells_per_s"]


def _measures(bb: Any, args: argparse.Namespace, device: Any, src: Path, root: Path) -> dict[str, Any]:
    """name -> a callable measuring one round (cells/s), in the order the rounds run them."""
    from mil.extract.engine import min_cosine, sample_cells

    paths = [str(p) for p in sorted(src.rglob("*.jpg"))]
    ceil = Ceiling(bb, args, device)
    out = root / "cellmil.h5"
    cells = sample_cells(paths, args.batch_size, bb.image_size, bb.interpolation)  # (B, 3, S, S)
    x = cells.repeat(-(-args.batch_size // len(cells)), 1, 1, 1)[:args.batch_size]
    engine = EngineCeiling(bb, extract_config(src, out, args), device, paths, x)
    ref = ceil.engine_reference(x)
    info = {**engine.engine.record, "torch_cosine_vs_fp32_min": ceil.cosine_vs_fp32()}
    m: dict[str, Any] = {"_engine": info, "ceiling": lambda: ceil.round(args.cells)}
    if engine.engine.name != "torch":
        info["cosine_vs_torch_min"] = min_cosine(engine.engine(x), ref)
        m["engine_ceiling"] = lambda: engine.round(args.cells)
    m["cellmil"] = lambda: _rate(cellmil(src, out, args), info)
    if args.stain_norm != "none":
        m["cellmil_plain"] = lambda: _rate(cellmil(src, out, args, stain_norm="none"), info)
    m["decode"] = lambda: decode_round(src, args, bb, device, engine.engine.name != "torch")
    if args.serial_too:
        m["cellmil_serial"] = lambda: _rate(cellmil(src, out, args, overlap=False), info)
    if args.int8:
        out8 = root / "cellmil_int8.h5"
        int8 = EngineCeiling(bb, extract_config(src, out8, args, precision="int8"), device, paths, x)
        info["int8"] = {**int8.engine.record, "cosine_vs_fp32_min": min_cosine(int8.engine(x), ref)}
        m["int8_ceiling"] = lambda: int8.round(args.cells)
        m["int8_cellmil"] = lambda: _rate(cellmil(src, out8, args, precision="int8"), info)
    return m


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All three measurements; returns a JSON-able dict."""
    import os

    import torch

    from mil.allocator import keep_freed_memory
    from mil.errors import CliError
    from mil.extract.backbone import build_backbone
    from mil.extract.config import ExtractConfig, runtime
    from mil.extract.pipeline import resolve_device, resolve_precision

    if args.rounds < 1 or args.cells < 1:
        raise CliError(f"--rounds and --cells must be >= 1, got {args.rounds} and {args.cells}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.precision = resolve_precision(args.precision, device.type)
    args.stain_norm = args.stain_norm or ExtractConfig().stain_norm
    args.batch_size, args.workers = runtime(
        ExtractConfig(batch_size=args.batch_size, workers=args.workers), device.type)
    tuned = keep_freed_memory() if device.type == "cpu" else False  # as mil.extract does
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="cellmil-bench-"))
    images = Path(args.images) if args.images else MATEK
    images = images if images.is_dir() and any(images.glob("*.jpg")) else None
    try:
        src = root / "cells"
        if src.exists():
            shutil.rmtree(src)
        make_cells(src, args.cells, args.cells_per_slide, images)
        bb = build_backbone(args.backbone, args.weights, args.image_size)
        res: dict[str, Any] = {
            "backbone": args.backbone, "image_size": bb.image_size, "cells": args.cells,
            "device": str(device), "batch_size": args.batch_size, "precision": args.precision,
            "channels_last": args.channels_last, "torch_threads": torch.get_num_threads(),
            "workers": args.workers, "stain_norm": args.stain_norm, "rounds": args.rounds,
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(), "malloc_tuned": tuned,
            "images": str(images) if images else "generated"}
        measures = _measures(bb, args, device, src, root)
        res["engine"] = measures.pop("_engine")
        got: dict[str, list[float]] = {name: [] for name in measures}
        for _ in range(args.rounds):  # alternating: a slow spell of the machine hits every row
            for name, measure in measures.items():
                got[name].append(measure())
        for name, rounds in got.items():
            res[name] = {"cells_per_s": max(rounds), "rounds_cells_per_s": rounds}
        res["ceiling"]["cosine_vs_fp32_min"] = res["engine"].pop("torch_cosine_vs_fp32_min")
        res["cellmil"]["cells"] = res["engine"].pop("cells_extracted")
        res["ratios"] = {f"{b}/{a}": _paired(got[b], got[a]) for b, a in RATIOS
                         if a in got and b in got}
        bound = serial_bound(got.get("engine_ceiling", got["ceiling"]), got["decode"])
        res["serial_bound"] = {"cells_per_s": max(bound), "rounds_cells_per_s": bound}
        res["ratios"]["cellmil/serial_bound"] = _paired(got["cellmil"], bound)
        res["round_ratios"] = res["ratios"]["cellmil/ceiling"]["rounds"]
        res["best_over_best"] = res["cellmil"]["cells_per_s"] / res["ceiling"]["cells_per_s"]
        if not args.skip_naive:
            (root / "naive.h5").unlink(missing_ok=True)
            res["naive"] = naive(bb, src, root / "naive.h5", args, device)
        c = res["cellmil"]["cells_per_s"]
        res["cellmil_over_ceiling"] = res["ratios"]["cellmil/ceiling"]["median"]
        if "naive" in res:
            res["cellmil_over_naive"] = c / res["naive"]["cells_per_s"]
        res["load_avg_after"] = os.getloadavg()
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return res


def table(res: dict[str, Any]) -> str:
    lines = [f"extract: {res['backbone']} @ {res['image_size']} px, {res['cells']} cells "
             f"({res['images']}), {res['device']}, batch {res['batch_size']}, precision "
             f"{res['precision']}, channels_last {res['channels_last']}, {res['torch_threads']} "
             f"torch threads, {res['workers']} workers, stain norm {res.get('stain_norm', 'none')}, "
             f"{res['rounds']} rounds, load "
             f"{res['load_avg'][0]:.2f}"]
    e = res["engine"]
    lines.append(f"engine: {e['engine']} {e['precision']}, feature space {e['feature_space']}"
                 + (f", min cosine to PyTorch fp32 {e['cosine_vs_torch_min']:.6f}"
                    if "cosine_vs_torch_min" in e else ""))
    if "int8" in e:
        lines.append(f"int8: feature space {e['int8']['feature_space']}, min cosine to PyTorch "
                     f"fp32 {e['int8']['cosine_vs_fp32_min']:.4f}")
    for key, what in ROWS.items():
        if key in res:
            rounds = res[key].get("rounds_cells_per_s")
            each = f"   (rounds: {' '.join(f'{r:.1f}' for r in rounds)})" if rounds else ""
            lines.append(f"{what:36} {res[key]['cells_per_s']:8.1f} cells/s{each}")
    for name, r in res["ratios"].items():
        lines.append(f"{name:36} {r['median']:8.3f} x   (median of rounds: "
                     f"{' '.join(f'{v:.2f}' for v in r['rounds'])})")
    lines.append(f"cellmil best/ceiling best {res['best_over_best']:.3f}"
                 + (f"   cellmil/naive {res['cellmil_over_naive']:.2f}" if "naive" in res else ""))
    if res["ceiling"].get("cosine_vs_fp32_min") is not None:
        lines.append(f"min cosine({res['precision']}, fp32) features: "
                     f"{res['ceiling']['cosine_vs_fp32_min']:.5f}")
    return "\n".join(lines)


def markdown(res: dict[str, Any]) -> list[tuple[str, str]]:
    """The README table's row."""
    e = res["engine"]
    rates = [f"{ROWS[k].split(')')[0][1:]}: {res[k]['cells_per_s']:.1f}" for k in ROWS if k in res]
    ratios = ", ".join(f"{k} {v['median']:.2f} x" for k, v in res["ratios"].items())
    return [(f"extract, `{res['backbone']}` @ {res['image_size']} px, {res['device']}, engine "
             f"{e['engine']} {e['precision']}, stain norm {res.get('stain_norm', 'none')}, "
             f"{res['rounds']} alternating rounds of {res['cells']}",
             f"cells/s ({', '.join(rates)}); median paired ratios: {ratios}")]
