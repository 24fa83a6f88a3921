"""``mil.extract``'s options and the device-dependent defaults they resolve to (no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from mil.errors import CliError
from mil.extract.backbone import DEFAULT_BACKBONE

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
    precision: Literal["auto", "32", "bf16", "16", "int8"] = field(default="auto", metadata={
        "help": "auto = bf16 on CUDA, 32 on CPU; int8 = post-training quantised (OpenVINO)"})
    engine: Literal["auto", "torch", "openvino", "onnxruntime"] = field(default="auto", metadata={
        "help": "auto = OpenVINO on the CPU when installed, else PyTorch (mil.extract.engine)"})
    overlap: bool = field(default=True, metadata={
        "help": "compiled engines: decode the next batch while the engine runs this one"})
    calibration_cells: int = field(default=300, metadata={
        "help": "int8: cohort cells that calibrate the quantisation", "metavar": "N"})
    stain_norm: Literal["none", "od-slide", "reinhard", "reinhard-slide"] = field(default="od-slide", metadata={
        "help": "colour-normalise crops before the backbone: od-slide (default) = one "
                "optical-density gain per channel and slide; reinhard = Lab colour transfer per "
                "crop (-slide: per slide); none (experiments/cross_cohort)"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    devices: int = field(default=1, metadata={"help": "processes per node (DDP when > 1)"})
    num_nodes: int = field(default=1, metadata={"help": "machines (DDP, e.g. under SLURM)"})
    dtype: Literal["float16", "float32"] = field(default="float16", metadata={
        "help": "stored feature dtype"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a store made with other settings"})

    def validate(self) -> None:
        for name in ("batch_size", "devices", "num_nodes", "calibration_cells"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CliError(f"--{name.replace('_', '-')} must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise CliError("--workers must be >= 0")
        if self.image_size is not None and self.image_size < 8:
            raise CliError("--image-size must be >= 8")
        if self.devices * self.num_nodes > 1 and self.engine not in ("auto", "torch"):
            raise CliError(f"--engine {self.engine} runs in one process; drop --devices/--num-nodes")


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
