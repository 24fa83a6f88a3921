"""``python -m mil.fit``: patient-grouped k-fold training of the MIL classifier on a bag store.

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

import csv
import json
import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from mil.config import config_dict, load_yaml, save_config
from mil.errors import CliError
from mil.provenance import check_same_features, feature_provenance
from mil.store import open_store
from mil.train.config import PRECISION, RUNTIME_KEYS, FitConfig
from mil.train.data import BagDataModule, BagSource
from mil.train.ensemble import ensemble_probs
from mil.train.instance_weights import InstanceWeights, parse_noise_rate
from mil.train.labels import read_labels
from mil.train.lightning_module import MILSystem
from mil.train.metrics import bootstrap_intervals, slide_metrics, summarize_folds, summary_table
from mil.train.preflight import preflight, save_inputs
from mil.train.splits import check_no_leak, load_splits, make_splits, save_splits

log = logging.getLogger("mil")


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
    if os.environ.get("RANK"):
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _loggers(fold_dir: Path) -> list[Any]:
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
    store = cfg.test_store or cfg.store
    check_same_features(ctx["provenance"], open_store(store).attrs, store,
                        owner=f"the training store {cfg.store}")
    table = read_labels(cfg.test_labels, ctx["classes"], open_store(store).slides())
    source = BagSource(store, table.slide_ids, ctx["weights"], stream=cfg.stream)
    ckpts = [Path(cfg.out) / f"fold_{k}" / "best.ckpt" for k in range(n_folds)]
    probs = ensemble_probs(ckpts, source, table.slide_ids)
    _write_predictions(Path(cfg.out) / "test_predictions.csv", table.slide_ids, table.labels,
                       probs, ctx["classes"])
    return slide_metrics(table.labels, probs, ctx["classes"])


def quiet_lightning() -> None:
    """Drop Lightning's banner lines and warnings that do not concern the user."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*exists and is not empty.*", ".*does not have many workers.*",
                    ".*isinstance\\(treespec, LeafSpec\\).*", ".*number of training batches.*"):
        warnings.filterwarnings("ignore", message=pattern)


def fit(cfg: FitConfig) -> dict[str, Any] | None:
    """Run the whole cross-validation; returns metrics.json's content (None off rank 0)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_lightning()
    run_dir = Path(cfg.out)
    store = open_store(cfg.store)
    table = read_labels(cfg.labels, cfg.classes, store.slides())
    noise = parse_noise_rate(cfg.noise_rate)
    cfg = replace(cfg, noise_rate=str(noise) if cfg.noise_rate is not None else None,
                  classes=table.classes, store=Path(cfg.store).resolve())  # type: ignore[arg-type]
    _check_resume(cfg, run_dir)
    inputs = preflight(cfg, table, store)
    folds, new_splits = _get_folds(cfg, table, run_dir)
    weights = InstanceWeights(cfg.instance_weights, cfg.filter_threshold, cfg.prior_strength, noise)
    attrs = store.attrs
    provenance = feature_provenance(attrs)
    ctx = {"label_of": table.label_of(), "classes": table.classes, "weights": weights,
           "provenance": provenance,
           "source": BagSource(cfg.store, table.slide_ids, weights, stream=cfg.stream)}
    # every input is checked: only now does the run folder get written (by rank 0 only)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        save_config(cfg, run_dir / "config.yaml")
        save_inputs(run_dir, inputs)
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
