"""python -m mil.fit: patient-grouped k-fold training of the MIL classifier on a bag store.

    python -m mil.fit features/cohort.h5 --labels slides.csv --out runs/r1 \\
        --instance-weights prior --noise-rate audit.json --loss gce --folds 5

Writes ``RUN_DIR/config.yaml`` (resolved), ``splits.json``, ``fold_K/best.ckpt`` (+ logs,
``predictions.csv``, ``metrics.json``), ``predictions.csv`` (out-of-fold), ``metrics.json``
and, with ``--test-labels``, ``test_predictions.csv`` from the fold ensemble. A fold whose
``best.ckpt`` and ``metrics.json`` exist is skipped on re-run, so an interrupted run resumes.

Model selection monitors the validation loss (the training loss on the validation slides), not
balanced accuracy: validation parts are small (a handful of slides per fold), where accuracy
moves in steps of 1/n and ties for many epochs, so early stopping on it stops at the first
plateau and the "best" epoch is arbitrary; the loss is continuous and also rewards calibration.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from mil.cli import run_cli, setup_logging
from mil.config import add_config_arguments, config_dict, load_yaml, resolve_config, save_config
from mil.errors import CliError

log = logging.getLogger("mil")
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
        ]
        for ok, msg in checks:
            if not ok:
                raise CliError(msg)


def _check_resume(cfg: FitConfig, run_dir: Path) -> None:
    """Refuse to resume a run folder made with other settings (that would mix two runs)."""
    old_path = run_dir / "config.yaml"
    if not old_path.is_file():
        return
    old, new = load_yaml(old_path), config_dict(cfg)
    diff = sorted(k for k in new if k not in RUNTIME_KEYS and k in old and old[k] != new[k])
    if diff:
        raise CliError(f"{run_dir} holds a run with other settings ({', '.join(diff)}); "
                       "choose another --out or delete it")


def _get_folds(cfg: FitConfig, table: Any, run_dir: Path) -> tuple[list[Any], bool]:
    """(leak-checked folds, whether they still need writing to RUN_DIR/splits.json)."""
    from mil.splits import check_no_leak, load_splits, make_splits

    own = run_dir / "splits.json"
    source = cfg.split_file or (own if own.is_file() else None)
    if source is not None:
        folds, _ = load_splits(source)
        known = set(table.slide_ids)
        extra = sorted({s for f in folds for s in f.train + f.val + f.test} - known)
        if extra:
            raise CliError(f"{source}: slide(s) without a label: {', '.join(extra[:5])}")
    else:
        names = [table.classes[i] for i in table.labels]  # errors name the class, not its index
        folds = make_splits(table.slide_ids, names, table.patients, k=cfg.folds,
                            seed=cfg.seed, val_fraction=cfg.val_fraction)
    check_no_leak(folds, dict(zip(table.slide_ids, table.patients, strict=True)))
    return folds, source != own


def _is_rank_zero() -> bool:
    """False in the processes other than global rank 0 that a DDP launcher started."""
    import os

    if os.environ.get("RANK"):
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _loggers(fold_dir: Path) -> list[Any]:
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(str(fold_dir), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(fold_dir), name="tb", version=""))
    except ImportError:
        pass
    return loggers


def train_fold(cfg: FitConfig, source: Any, label_of: dict[str, int], classes: list[str],
               fold: Any, fold_dir: Path, seed: int, provenance: dict[str, Any]) -> Path | None:
    """Train one fold; returns the best checkpoint path (None on non-zero DDP ranks)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from mil.data import BagDataModule
    from mil.system import MILSystem

    pl.seed_everything(seed, workers=True, verbose=False)
    dm = BagDataModule(source, label_of, fold.train, fold.val, fold.test,
                       batch_size=cfg.batch_size, max_cells=cfg.max_cells or None,
                       workers=cfg.workers, seed=seed)
    system = MILSystem(
        in_dim=source.feature_dim, classes=classes, pooling=cfg.model, hidden=cfg.hidden,
        attn_hidden=cfg.attn_hidden, dropout=cfg.dropout, loss=cfg.loss, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac,
        instance_weights=cfg.instance_weights, prior_strength=cfg.prior_strength,
        provenance=provenance)
    ckpt = ModelCheckpoint(dirpath=str(fold_dir), filename="best", monitor="val/loss",
                           mode="min", save_top_k=1, save_weights_only=True,
                           auto_insert_metric_name=False, enable_version_counter=False)
    trainer = pl.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=_devices(cfg.devices),
        num_nodes=cfg.num_nodes, strategy=cfg.strategy, precision=PRECISION[cfg.precision],
        gradient_clip_val=cfg.grad_clip or None, deterministic="warn",
        callbacks=[ckpt, EarlyStopping("val/loss", patience=cfg.patience, mode="min")],
        logger=_loggers(fold_dir), default_root_dir=str(fold_dir),
        enable_progress_bar=cfg.progress, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(system, datamodule=dm)
    if not trainer.is_global_zero:
        return None
    return Path(ckpt.best_model_path)


def _write_predictions(path: Path, slide_ids: list[str], truth: list[int] | None,
                       probs: Any, classes: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "truth", "prediction", *(f"prob_{c}" for c in classes)])
        for i, sid in enumerate(slide_ids):
            t = classes[truth[i]] if truth is not None and truth[i] >= 0 else ""
            w.writerow([sid, t, classes[int(probs[i].argmax())], *(f"{p:.6f}" for p in probs[i])])


def _run_fold(cfg: FitConfig, k: int, fold: Any, ctx: dict[str, Any]) -> dict[str, Any] | None:
    """Train (or reuse) fold k; returns {slide_ids, labels, probs, metrics} on rank 0."""
    import numpy as np

    from mil.metrics import slide_metrics
    from mil.predict import ensemble_probs

    fold_dir = Path(cfg.out) / f"fold_{k}"
    best, done = fold_dir / "best.ckpt", fold_dir / "metrics.json"
    label_of, classes = ctx["label_of"], ctx["classes"]
    if best.is_file() and done.is_file():
        log.info("fold %d: finished earlier, reusing %s", k, best)
    else:
        fold_dir.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        path = train_fold(cfg, ctx["source"], label_of, classes, fold, fold_dir, cfg.seed + k,
                          ctx["provenance"])
        if path is None:
            return None
        if path != best:
            path.replace(best)
    probs = ensemble_probs([best], ctx["source"], fold.test)  # (n, C)
    truth = [label_of[s] for s in fold.test]
    _write_predictions(fold_dir / "predictions.csv", fold.test, truth, probs, classes)
    metrics = slide_metrics(truth, probs, classes)
    if not done.is_file():
        done.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")  # written last
    return {"slide_ids": list(fold.test), "labels": truth, "probs": np.asarray(probs),
            "metrics": metrics}


def _external(cfg: FitConfig, ctx: dict[str, Any], n_folds: int) -> dict[str, Any]:
    """The fold ensemble on an external labelled cohort."""
    from mil.data import BagSource, read_labels
    from mil.metrics import slide_metrics
    from mil.predict import check_store, ensemble_probs
    from mil.store import open_store

    store = cfg.test_store or cfg.store
    check_store(open_store(store), ctx["provenance"], store)
    table = read_labels(cfg.test_labels, ctx["classes"], open_store(store).slides())
    source = BagSource(store, table.slide_ids, ctx["weights"], stream=cfg.stream)
    ckpts = [Path(cfg.out) / f"fold_{k}" / "best.ckpt" for k in range(n_folds)]
    probs = ensemble_probs(ckpts, source, table.slide_ids)
    _write_predictions(Path(cfg.out) / "test_predictions.csv", table.slide_ids, table.labels,
                       probs, ctx["classes"])
    return slide_metrics(table.labels, probs, ctx["classes"])


def quiet_lightning() -> None:
    """Drop Lightning's banner lines and warnings that do not concern the user."""
    import warnings

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*exists and is not empty.*", ".*does not have many workers.*",
                    ".*isinstance\\(treespec, LeafSpec\\).*", ".*number of training batches.*"):
        warnings.filterwarnings("ignore", message=pattern)


def fit(cfg: FitConfig) -> dict[str, Any] | None:
    """Run the whole cross-validation; returns metrics.json's content (None off rank 0)."""
    import numpy as np
    import torch

    from mil.data import BagSource, read_labels
    from mil.metrics import bootstrap_intervals, slide_metrics, summarize_folds, summary_table
    from mil.splits import save_splits
    from mil.store import open_store
    from mil.weights import InstanceWeights, parse_noise_rate

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_lightning()
    run_dir = Path(cfg.out)
    store = open_store(cfg.store)
    table = read_labels(cfg.labels, cfg.classes, store.slides())
    noise = parse_noise_rate(cfg.noise_rate)
    cfg = replace(cfg, noise_rate=str(noise) if cfg.noise_rate is not None else None,
                  classes=table.classes)
    _check_resume(cfg, run_dir)
    folds, new_splits = _get_folds(cfg, table, run_dir)
    weights = InstanceWeights(cfg.instance_weights, cfg.filter_threshold, cfg.prior_strength, noise)
    attrs = store.attrs
    provenance = {k: attrs.get(k) for k in ("backbone", "weights_sha256", "feature_dim",
                                            "image_size")}
    ctx = {"label_of": table.label_of(), "classes": table.classes, "weights": weights,
           "provenance": provenance,
           "source": BagSource(cfg.store, table.slide_ids, weights, stream=cfg.stream)}
    # every input is checked: only now does the run folder get written (by rank 0 only)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        save_config(cfg, run_dir / "config.yaml")
    if new_splits and _is_rank_zero():
        save_splits(folds, run_dir / "splits.json",
                    {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "labels": str(cfg.labels)})
    results = [_run_fold(cfg, k, fold, ctx) for k, fold in enumerate(folds)]
    if any(r is None for r in results):
        return None
    ids = [s for r in results for s in r["slide_ids"]]
    truth = [y for r in results for y in r["labels"]]
    probs = np.concatenate([r["probs"] for r in results])
    _write_predictions(run_dir / "predictions.csv", ids, truth, probs, table.classes)
    per_fold = [r["metrics"] for r in results]
    pooled = slide_metrics(truth, probs, table.classes)
    pooled["ci95"] = bootstrap_intervals(truth, probs, len(table.classes), seed=cfg.seed)
    out = {"classes": table.classes, "folds": per_fold, "mean_sd": summarize_folds(per_fold),
           "pooled": pooled}
    if cfg.test_labels:
        out["external"] = _external(cfg, ctx, len(folds))
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(summary_table(per_fold, out["mean_sd"], pooled))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mil.fit",
                                     description="Cross-validated MIL training on a bag store.")
    parser.add_argument("store", type=Path, help="bag store (.h5 / .zarr)")
    parser.add_argument("--config", metavar="FILE.yaml", help="options file; flags override it")
    add_config_arguments(parser, FitConfig)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        fit(resolve_config(FitConfig, args))
        return 0

    return run_cli(body, "mil.fit")


if __name__ == "__main__":
    raise SystemExit(main())
