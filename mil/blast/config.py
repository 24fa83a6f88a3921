"""Options of ``python -m mil.blast fit`` and ``noise`` (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mil.errors import CliError


@dataclass
class FilterConfig:
    """Options of ``python -m mil.blast fit``."""

    labels: str | None = field(default=None, metadata={"help": "CSV slide_id,cell_id,label"})
    out: str | None = field(default=None, metadata={"help": "filter file to write (.pt)"})
    model: Literal["linear", "mlp"] = field(default="linear", metadata={"help": "classifier"})
    loss: Literal["ce", "gce"] = field(default="gce", metadata={"help": "training loss"})
    gce_q: float = field(default=0.7, metadata={"help": "GCE exponent q (0 < q <= 1)"})
    folds: int = field(default=5, metadata={"help": "slide-grouped CV folds"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    epochs: int = field(default=300, metadata={"help": "full-batch Adam steps"})
    lr: float = field(default=1e-2, metadata={"help": "learning rate"})
    l2: float = field(default=1.0, metadata={"help": "L2 penalty l2/2*||W||^2 on the weights"})
    hidden: int = field(default=128, metadata={"help": "MLP hidden units"})
    standardise: Literal["train", "cohort", "none"] = field(default="train", metadata={
        "help": "features standardised by the training cells' mean/std; cohort: predict "
                "re-estimates them on the store it annotates"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
    corrections: str | None = field(default=None, metadata={
        "help": "audit folder whose reviewed cells' consensus replaces (or adds) their labels; "
                "cells the raters call unusable are dropped", "metavar": "AUDIT_DIR"})
    allow_missing: bool = field(default=False, metadata={
        "help": "skip (with a warning) labelled cells absent from the store instead of failing"})
    store: str | None = field(default=None, metadata={"flag": False})

    def validate(self) -> None:
        if not self.labels or not self.out:
            raise CliError("fit needs --labels CSV and --out FILTER.pt (flags or --config)")
        if not 0.0 < self.gce_q <= 1.0:
            raise CliError(f"--gce-q must be in (0, 1], got {self.gce_q}")
        if self.epochs < 1 or self.bootstrap < 0 or self.l2 < 0:
            raise CliError("--epochs must be >= 1, --bootstrap and --l2 >= 0")

    def train_kwargs(self) -> dict[str, Any]:
        return {"model": self.model, "loss": self.loss, "epochs": self.epochs, "lr": self.lr,
                "l2": self.l2, "hidden": self.hidden, "gce_q": self.gce_q,
                "seed": self.seed, "standardise": self.standardise}


@dataclass
class NoiseConfig(FilterConfig):
    """Options of ``python -m mil.blast noise`` (the cross-validation of ``fit``)."""

    out: str | None = field(default=None, metadata={
        "help": "JSON to write; suspects.csv is written beside it"})

    def validate(self) -> None:
        if not self.labels or not self.out:
            raise CliError("noise needs --labels CSV and --out NOISE.json (flags or --config)")
        FilterConfig.validate(self)
