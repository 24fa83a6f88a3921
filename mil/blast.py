"""``python -m mil.blast``: fit, apply and audit the blast filter (the instance classifier).

    python -m mil.blast fit STORE --labels cell_labels.csv --out filter.pt [--loss gce]
    python -m mil.blast predict STORE --filter filter.pt [--overwrite]
    python -m mil.blast audit STORE --n 200 --out audit/ [--seed 0] [--source ROOT]
    python -m mil.blast audit --score audit/review.csv [--out noise.json]

``fit`` trains on the stored embeddings of expert-labelled cells (``slide_id,cell_id,label``,
label blast/non-blast or 1/0). Cross-validation is grouped by slide; out-of-fold predictions
give accuracy, balanced accuracy, AUROC and ECE with 95% slide-level bootstrap intervals and the
temperature; the final filter is trained on all labelled cells. The default loss is generalized
cross-entropy (GCE, q=0.7), because expert cell labels are noisy and GCE bounds the pull of a
wrong label (see experiments/blast_filter_synthetic for the ce/gce comparison). Probabilities
are calibrated against the given (noisy) labels with a single temperature, which does not move
the 0.5 decision boundary.

``predict`` writes ``blast_prob`` (float32) beside the features of every slide. ``audit`` draws
a sample stratified by predicted class for expert review; ``audit --score`` turns the filled
sheet into the filter's error rates; the key ``error_rate`` of its JSON is the estimated noise
rate of the blast weights (``mil.fit --noise-rate noise.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mil.config import add_config_arguments, resolve_config, save_config
from mil.errors import CliError

log = logging.getLogger("mil.blast")


@dataclass
class FitConfig:
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
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates for CIs"})
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
                "seed": self.seed}


def read_cell_labels(path: str | Path) -> dict[tuple[str, str], int]:
    """``{(slide_id, cell_id): 0/1}`` from a label CSV; any bad row is a one-line CliError."""
    from mil.audit import parse_label

    path = Path(path)
    if not path.is_file():
        raise CliError(f"label file not found: {path}")
    out: dict[tuple[str, str], int] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = {c.strip() for c in reader.fieldnames or []}
        missing = [c for c in ("slide_id", "cell_id", "label") if c not in cols]
        if missing:
            raise CliError(f"{path}: lacks column(s) {', '.join(missing)} "
                           f"(has: {', '.join(sorted(cols)) or 'none'})")
        for row_no, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            value = parse_label(row["label"])
            if value is None:
                raise CliError(f"{path}, row {row_no}: unknown label {row['label']!r} "
                               "(expected blast/non-blast or 1/0)")
            key = (row["slide_id"], row["cell_id"])
            if key in out:
                raise CliError(f"{path}, row {row_no}: cell '{key[1]}' of slide '{key[0]}' "
                               "is labelled twice")
            out[key] = value
    if not out:
        raise CliError(f"{path}: no labelled cells")
    return out


def main(argv: list[str] | None = None) -> int:
    from mil.cli import run_cli, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))

    def body() -> int:
        from mil import blast_run

        if args.command == "fit":
            cfg = resolve_config(FitConfig, args, store=args.store)
            metrics = blast_run.fit(cfg)
            out = Path(cfg.out)  # type: ignore[arg-type]
            save_config(cfg, out.with_suffix(".config.yaml"))
            print(blast_run.metrics_text(metrics))
        elif args.command == "predict":
            blast_run.predict(args.store, args.filter, overwrite=args.overwrite)
        elif args.score:
            if args.store:
                raise CliError("audit --score takes the review sheet, not a store")
            result = blast_run.score(Path(args.score), args.out)
            print(json.dumps({k: result[k] for k in ("error_rate", "ci", "n")}))
        else:
            if not args.store or not args.out:
                raise CliError("audit needs STORE and --out DIR (or --score review.csv)")
            blast_run.audit(args.store, n=args.n, out=Path(args.out), seed=args.seed,
                            source=args.source)
        return 0

    return run_cli(body, "mil.blast")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mil.blast", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train the filter on expert-labelled cells")
    fit.add_argument("store", help="bag store (.h5 / .zarr)")
    fit.add_argument("--config", help="YAML with any of the options below")
    add_config_arguments(fit, FitConfig)
    pred = sub.add_parser("predict", help="write blast_prob for every cell of the store")
    pred.add_argument("store")
    pred.add_argument("--filter", required=True, help="filter file written by fit")
    pred.add_argument("--overwrite", action="store_true",
                      help="replace blast_prob written by another filter")
    aud = sub.add_parser("audit", help="sample cells for expert review, or score a review")
    aud.add_argument("store", nargs="?", help="bag store with blast_prob")
    aud.add_argument("--n", type=int, default=200, help="cells to sample (default: 200)")
    aud.add_argument("--out", help="output folder (sampling) or JSON file (--score; default: "
                                   "noise.json beside the sheet)")
    aud.add_argument("--seed", type=int, default=0)
    aud.add_argument("--source", help="root the store's cell paths are relative to "
                                      "(default: the root recorded by extract)")
    aud.add_argument("--score", metavar="REVIEW_CSV", help="score a filled review sheet")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
