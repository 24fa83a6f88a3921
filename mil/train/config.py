"""Options of ``python -m mil.fit`` (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mil.errors import CliError

# options that change how a run is executed, not what it computes: free to differ on resume
RUNTIME_KEYS = {"accelerator", "devices", "num_nodes", "strategy", "workers", "stream",
                "progress", "threads", "test_labels", "test_store", "out", "store", "labels"}
PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


@dataclass
class FitConfig:
    """Options of ``python -m mil.fit``."""

    store: Path | None = field(default=None, metadata={"flag": False})
    labels: Path | None = field(default=None, metadata={"help": "slides CSV: slide_id,label[,patient_id]"})
    out: Path | None = field(default=None, metadata={"help": "run folder"})
    classes: list[str] | None = field(default=None, metadata={"help": "class names in order, comma-separated"})
    task: Literal["multiclass", "multilabel"] = field(default="multiclass", metadata={
        "help": "multiclass: one label per slide (slide_id,label); multilabel: a 1/0/empty "
                "column per target (one attention branch and sigmoid per target)"})
    targets: list[str] | None = field(default=None, metadata={
        "help": "multilabel: target columns in order, comma-separated (default: every column "
                "but slide_id/patient_id)"})
    model: Literal["gated", "gated-multibranch", "mean", "max"] = field(default="gated", metadata={"help": "pooling"})
    hidden: int = field(default=128, metadata={"help": "projection width"})
    attn_hidden: int = field(default=128, metadata={"help": "attention MLP width"})
    dropout: float = field(default=0.25, metadata={"help": "dropout"})
    instance_weights: Literal["none", "filter", "prior"] = field(default="none", metadata={"help": "use of blast_prob"})
    filter_threshold: float = field(default=0.5, metadata={"help": "filter: keep cells with p >= this"})
    prior_strength: float = field(default=1.0, metadata={"help": "prior: weight of log(p) in attention"})
    noise_rate: str | None = field(default=None, metadata={"help": "blast-call error rate e or audit JSON", "metavar": "FILE_OR_FLOAT"})
    loss: Literal["ce", "gce", "sce", "smooth"] = field(default="ce", metadata={"help": "slide loss"})
    max_cells: int | None = field(default=512, metadata={"help": "cells sampled per bag per step (0: all)"})
    batch_size: int = field(default=16, metadata={"help": "bags per batch"})
    epochs: int = field(default=100, metadata={"help": "maximum epochs"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay"})
    warmup_frac: float = field(default=0.05, metadata={"help": "share of steps of linear warmup"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    patience: int = field(default=20, metadata={"help": "early stopping patience (epochs)"})
    folds: int = field(default=5, metadata={"help": "k of k-fold CV"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of training patients for validation"})
    split_file: Path | None = field(default=None, metadata={"help": "reuse this splits.json"})
    test_labels: Path | None = field(default=None, metadata={"help": "external cohort labels CSV"})
    test_store: Path | None = field(default=None, metadata={"help": "store of the external cohort"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    accelerator: str = field(default="auto", metadata={"help": "Lightning accelerator"})
    devices: str = field(default="auto", metadata={"help": "devices per node (N or auto)"})
    num_nodes: int = field(default=1, metadata={"help": "nodes"})
    strategy: str = field(default="auto", metadata={"help": "Lightning strategy (ddp, ddp_spawn, ...)"})
    precision: Literal["32", "bf16", "16"] = field(default="32", metadata={"help": "training precision"})
    stream: bool = field(default=False, metadata={"help": "read bags from the store per step"})
    workers: int = field(default=0, metadata={"help": "DataLoader workers"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    standardise: Literal["cohort", "train", "none"] = field(default="cohort", metadata={
        "help": "features standardised in the model: by the mean/std of the cohort predicted "
                "(>= 10 slides; the training cells' below), always the training cells' (train), "
                "or not at all"})
    final_seeds: int = field(default=5, metadata={
        "help": "models trained on every labelled slide for the folds' median best epoch, "
                "used for new slides (0: none, the fold ensemble predicts)"})
    calibration: Literal["temperature", "none"] = field(default="temperature", metadata={
        "help": "temperature scaling fitted on the out-of-fold predictions"})
    threshold: Literal["balanced", "argmax"] = field(default="balanced", metadata={
        "help": "binary call: threshold maximising out-of-fold balanced accuracy, or argmax"})
    baselines: bool = field(default=True, metadata={
        "help": "also fit mean-pooled logistic-regression baselines on the same folds"})

    def validate(self) -> None:
        checks = [
            (self.store is not None, "a bag store is required"),
            (self.labels is not None, "--labels is required"),
            (self.out is not None, "--out is required"),
            (self.folds >= 2, f"--folds must be >= 2, got {self.folds}"),
            (0.0 < self.val_fraction < 1.0, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (0.0 < self.filter_threshold < 1.0, f"--filter-threshold must be in (0, 1), got {self.filter_threshold}"),
            (self.max_cells is None or self.max_cells >= 0, "--max-cells must be >= 0"),
            (self.final_seeds >= 0, f"--final-seeds must be >= 0, got {self.final_seeds}"),
        ]
        if self.targets and self.task != "multilabel":
            checks.append((False, "--targets is for --task multilabel (one label per slide "
                                  "takes --classes)"))
        if self.task == "multilabel":
            checks += [(not self.test_labels, "--test-labels is not supported with --task "
                                    "multilabel yet; use mil.predict on the cohort")]
        for ok, msg in checks:
            if not ok:
                raise CliError(msg)
