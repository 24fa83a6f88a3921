"""Inference engines for extraction: PyTorch, or the backbone compiled by OpenVINO / ONNX Runtime.

    engine = build_engine(bb, cfg, device, cells, out)   # converts once, cached beside the store
    feats = engine.submit(x).result()                    # x uint8 (B, 3, S, S) -> (B, D) float32

``--engine auto`` is OpenVINO on the CPU when it is installed (``pip install -e ".[cpu]"``), else
PyTorch, with a one-line note. A compiled engine takes the loader's uint8 channels-last batch as
it is: normalisation is part of the compiled graph (OpenVINO) or one fused torch op (ONNX Runtime).

The converted model is cached in ``OUT.engines/``, keyed by backbone, weights digest, input size,
engine and precision, with a JSON record of the check made when it was converted: a fixed batch
of the cohort's own cells through PyTorch (at the same precision; fp32 for int8) and through the
engine. The engine's features count as PyTorch's (``feature_space`` = the precision, e.g.
``fp32``) only when every cell agrees to cosine >= 0.9999; otherwise, and always for int8, the
store gets a feature space of its own, and stores or filters of another space are refused.

``--precision int8`` (OpenVINO) quantises the backbone post-training with NNCF, calibrated on
cells drawn evenly from the cohort; its feature space names the quantised model's digest.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError

log = logging.getLogger("mil.extract")
ENGINES = ("auto", "torch", "openvino", "onnxruntime")
COMPILED = ("openvino", "onnxruntime")
AGREE = 0.9999  # min cosine for an engine's features to count as PyTorch's
CHECK_CELLS = 16
SPACE_NAME = {"32": "fp32", "bf16": "bf16", "16": "fp16"}
INSTALL = 'pip install -e ".[cpu]"'


def importable(module: str) -> bool:
    """True when ``module`` imports (tests hide one with ``sys.modules[name] = None``)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve_engine(name: str, device_type: str, processes: int = 1) -> str:
    """``auto`` -> openvino on the CPU when installed (one process), else torch, with a note."""
    if name == "auto":
        if device_type != "cpu" or processes > 1:
            return "torch"
        if importable("openvino"):
            return "openvino"
        log.info("engine: PyTorch (OpenVINO is not installed; %s for a faster CPU engine)", INSTALL)
        return "torch"
    if name in COMPILED:
        if device_type != "cpu":
            raise CliError(f"--engine {name} runs on the CPU; use --device cpu or --engine torch")
        if processes > 1:
            raise CliError(f"--engine {name} runs in one process; drop --devices/--num-nodes")
        if not importable(name):
            raise CliError(f"--engine {name}: the package is not installed ({INSTALL})")
    return name


def check_precision(engine: str, precision: str) -> None:
    allowed = {"torch": ("32", "bf16", "16"), "openvino": ("32", "bf16", "int8"),
               "onnxruntime": ("32",)}[engine]
    if precision not in allowed:
        raise CliError(f"--precision {precision} is not available with --engine {engine} "
                       f"(choose from {', '.join(allowed)})")


def torch_record(precision: str) -> dict[str, Any]:
    """Store provenance of PyTorch features (the reference of every feature space)."""
    return {"engine": "torch", "precision": precision, "feature_space": SPACE_NAME[precision]}


# -- engines ------------------------------------------------------------------------------------
class TorchEngine:
    """The timm model itself: normalise, autocast, forward, on the run's device (synchronous)."""

    name = "torch"

    def __init__(self, bb: Any, device: Any, precision: str, channels_last: bool = True):
        import torch

        self.bb, self.device, self.precision, self.channels_last = bb, device, precision, channels_last
        self.model = bb.model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, x: Any) -> Any:
        """x uint8 (B, 3, S, S) -> feats (B, D) float32 on the CPU."""
        import torch

        from mil.extract.images import normalise
        from mil.extract.pipeline import autocast

        with torch.inference_mode():
            xb = normalise(x.to(self.device, non_blocking=True), self.bb.mean, self.bb.std)
            if not self.channels_last:
                xb = xb.contiguous()
            with autocast(self.device, self.precision):
                return self.model(xb).float().cpu()  # (B, D)

    def submit(self, x: Any) -> Future:
        done: Future = Future()
        done.set_result(self(x))
        return done

    def close(self) -> None:
        pass


class CompiledEngine:
    """A compiled model run on one background thread, so the next batch decodes meanwhile."""

    def __init__(self, name: str, precision: str, run: Any, overlap: bool = True):
        self.name, self.precision, self._run = name, precision, run
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name) if overlap else None

    def __call__(self, x: Any) -> Any:
        import torch

        return torch.from_numpy(self._run(x))  # (B, D)

    def submit(self, x: Any) -> Future:
        if self._pool is None:
            done: Future = Future()
            done.set_result(self(x))
            return done
        return self._pool.submit(self, x)  # the engines release the GIL while they compute

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()


def nhwc(x: Any) -> np.ndarray:
    """uint8 (B, 3, S, S) channels-last view -> contiguous (B, S, S, 3) numpy (no copy if a view)."""
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


# -- OpenVINO -----------------------------------------------------------------------------------
def openvino_model(bb: Any, calib: Any = None) -> Any:
    """The backbone as an OpenVINO model taking uint8 NHWC and normalising inside the graph;
    quantised to int8 by NNCF when ``calib`` (uint8 (N, 3, S, S) cohort cells) is given."""
    import openvino as ov
    import torch

    s = bb.image_size
    model = ov.convert_model(bb.model, example_input=torch.zeros(1, 3, s, s),
                             input=[(-1, 3, s, s)])
    model = with_preprocessing(model, bb)
    return model if calib is None else quantise(model, calib)


def with_preprocessing(model: Any, bb: Any) -> Any:
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32) \
        .mean([255.0 * m for m in bb.mean]).scale([255.0 * v for v in bb.std])
    return ppp.build()


def quantise(model: Any, calib: Any) -> Any:
    """NNCF post-training int8 (static activation ranges from the calibration cells).

    The stem convolution stays in fp32 and biases get NNCF's full (not fast) correction: on
    the 1,150 Matek cells this raised the worst cell's feature cosine to fp32 from 0.942 to 0.993
    (mean 0.993 -> 0.998) at about the same speed; either change alone left it at 0.961-0.967
    (``experiments/int8_features_matek``).
    """
    import nncf

    items = [nhwc(calib[i:i + 1]) for i in range(len(calib))]  # (1, S, S, 3) uint8 each
    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                         preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False,
                         ignored_scope=nncf.IgnoredScope(names=stem_convolution(model)))


def stem_convolution(model: Any) -> list[str]:
    """The name of the graph's first convolution (none if it has none)."""
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            return [op.get_friendly_name()]
    return []


def compile_openvino(path: Path, precision: str, threads: int | None) -> Any:
    """Compile the saved model for the CPU (LATENCY hint: one stream over all cores)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino_core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: Any) -> np.ndarray:
        b = x.shape[0]
        if b < OPENVINO_MIN_BATCH:  # padded with copies of the last cell, sliced off after
            x = torch_cat_pad(x, OPENVINO_MIN_BATCH)
        request.infer({0: nhwc(x)}, share_inputs=True)
        return request.get_output_tensor(0).data[:b].copy()  # (B, D) float32

    run.compiled = compiled  # type: ignore[attr-defined]  # freed after its request, not before
    return run


# OpenVINO 2026.4's CPU plugin crashed the process (SIGSEGV) on int8 models given batches of 1-4
# cells (seen with test_efficientnet at 32 px, batches of 1, 2 and 4; 7 and 8 ran): a last partial
# batch of a cohort can be that small, so every call gets at least this many rows.
OPENVINO_MIN_BATCH = 8


def torch_cat_pad(x: Any, n: int) -> Any:
    """uint8 (B, 3, S, S) -> (n, 3, S, S): the last cell repeated; channels_last kept."""
    import torch

    pad = x[-1:].expand(n - x.shape[0], *x.shape[1:])
    return torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)


@functools.cache
def openvino_core() -> Any:
    """One OpenVINO Core per process, never freed: a compiled model that outlives the Core that
    made it (its plugin unloaded) crashed the process when it was garbage-collected later."""
    import openvino as ov

    return ov.Core()


# -- ONNX Runtime -------------------------------------------------------------------------------
def onnx_export(bb: Any, path: Path) -> None:
    import torch

    s = bb.image_size
    torch.onnx.export(bb.model, (torch.zeros(1, 3, s, s),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["feats"],
                      dynamic_axes={"x": {0: "batch"}, "feats": {0: "batch"}})


def compile_onnxruntime(path: Path, bb: Any, threads: int | None) -> Any:
    import onnxruntime as ort

    from mil.extract.images import normalise

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: Any) -> np.ndarray:
        xb = normalise(x, bb.mean, bb.std).contiguous()  # (B, 3, S, S) float32, NCHW
        return session.run(None, {"x": xb.numpy()})[0]

    return run


# -- conversion, cache, check -------------------------------------------------------------------
def cache_dir(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name + ".engines")


def cache_key(bb: Any, engine: str, precision: str, calib_cells: int, stain_norm: str = "none") -> str:
    """The converted model's folder name: backbone, weights, size, engine, precision; for int8
    also its calibration (cells, and the stain normalisation they had)."""
    sha = str(bb.weights.get("sha256") or "none")[:16]
    extra = f"-cal{calib_cells}" if precision == "int8" else ""
    if precision == "int8" and stain_norm != "none":
        from mil.extract.stain import stain_record

        record = stain_record(stain_norm)  # reference, order, slide statistics
        extra += f"-{stain_norm}-{hashlib.sha256(record.encode()).hexdigest()[:8]}"
    return f"{bb.name}-{sha}-{bb.image_size}px-{engine}-{SPACE_NAME.get(precision, precision)}{extra}"


def sample_cells(paths: list[str], n: int, size: int, interpolation: str,
                 slides: list[str] | None = None, stain_norm: str = "none") -> Any:
    """Up to ``n`` cells spread evenly over the cohort -> uint8 (n', 3, S, S); noise if none load.

    With ``slides`` (each path's slide) and a ``stain_norm``, the cells are normalised as the
    extraction normalises them (each slide's statistics from its sampled cells), so that int8
    calibration sees the pixels the model will see."""
    import torch

    from mil.extract.images import CellImages
    from mil.extract.stain import StainNormaliser

    pick = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(n, len(paths)))}) if paths else []
    stain = (StainNormaliser(stain_norm, slide_of=[slides[i] for i in pick])
             if slides and stain_norm != "none" else None)
    rows = CellImages([paths[i] for i in pick], size, interpolation, threads=2,
                      stain=stain).__getitems__(list(range(len(pick))))
    good = [x for _, x, ok in rows if ok]
    if not good:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    return torch.stack(good).permute(0, 3, 1, 2)  # (n', 3, S, S) channels-last view


def convert(bb: Any, engine: str, precision: str, folder: Path, calib: Any) -> Path:
    """Write the converted (or quantised) model into ``folder``; returns the model file."""
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracers' deprecation and tracing notes
        if engine == "onnxruntime":
            onnx_export(bb, folder / "model.onnx")
            return folder / "model.onnx"
        import openvino as ov

        model = openvino_model(bb, calib if precision == "int8" else None)
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
    return folder / "model.xml"


def model_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for part in sorted(path.parent.glob("model.*")):
        h.update(part.read_bytes())
    return h.hexdigest()


def min_cosine(a: Any, b: Any) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.double(), b.double()).min())


def build_engine(bb: Any, cfg: Any, device: Any, paths: list[str], out: str | Path,
                 slides: list[str] | None = None) -> Any:
    """The engine ``cfg`` asks for, its model converted once and cached beside the store.

    ``slides``: each path's slide, for stain-normalised calibration cells. Returns an engine
    with ``.record``: the provenance written into the store's attributes.
    """
    from mil.extract.pipeline import resolve_precision

    engine = resolve_engine(cfg.engine, device.type, cfg.devices * cfg.num_nodes)
    precision = resolve_precision(cfg.precision, device.type)
    check_precision(engine, precision)
    if engine == "torch":
        eng: Any = TorchEngine(bb, device, precision, cfg.channels_last)
        eng.record = torch_record(precision)
        return eng
    stain = cfg.stain_norm if slides else "none"
    folder = cache_dir(out) / cache_key(bb, engine, precision, cfg.calibration_cells, stain)
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        log.info("engine: %s %s, reusing %s", engine, precision, folder)
    else:
        meta = convert_and_check(bb, engine, precision, folder, paths, cfg, slides)
    path = folder / meta["model"]
    run = (compile_onnxruntime(path, bb, cfg.threads) if engine == "onnxruntime"
           else compile_openvino(path, precision, cfg.threads))
    eng = CompiledEngine(engine, precision, run, overlap=cfg.overlap)
    eng.record = {"engine": engine, "precision": precision, "feature_space": meta["feature_space"],
                  "engine_check": {k: meta[k] for k in ("cosine_min", "check_cells", "version",
                                                        "model_sha256", "reference")}}
    return eng


def convert_and_check(bb: Any, engine: str, precision: str, folder: Path, paths: list[str],
                      cfg: Any, slides: list[str] | None = None) -> dict[str, Any]:
    """Convert into ``folder`` (atomically), run the check batch through both, write meta.json."""
    import torch

    log.info("engine: converting %s for %s %s (once; cached in %s)", bb.name, engine, precision,
             folder.parent)
    n = max(CHECK_CELLS, cfg.calibration_cells if precision == "int8" else 0)
    cells = sample_cells(paths, n, bb.image_size, bb.interpolation, slides,
                         cfg.stain_norm)  # (n, 3, S, S) uint8
    check = cells[torch.linspace(0, len(cells) - 1, min(CHECK_CELLS, len(cells))).long()]
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = convert(bb, engine, precision, tmp, cells)
    ref_precision = "32" if precision == "int8" else precision
    ref = TorchEngine(bb, torch.device("cpu"), ref_precision, cfg.channels_last)(check)
    run = (compile_onnxruntime(model, bb, cfg.threads) if engine == "onnxruntime"
           else compile_openvino(model, precision, cfg.threads))
    cosine = min_cosine(torch.from_numpy(run(check)), ref)
    digest = model_sha256(model)
    same = precision != "int8" and cosine >= AGREE
    space = SPACE_NAME.get(precision, precision)
    meta = {"engine": engine, "precision": precision, "model": model.name,
            "version": importlib.import_module(engine).__version__, "model_sha256": digest,
            "cosine_min": cosine, "check_cells": len(check), "reference": f"torch {ref_precision}",
            "feature_space": space if same else f"{engine}-{space}-{digest[:12]}",
            "calibration_cells": len(cells) if precision == "int8" else 0}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log.info("engine: %s %s vs torch %s on %d cells: min cosine %.6f -> feature space %s",
             engine, precision, ref_precision, len(check), cosine, meta["feature_space"])
    return meta
