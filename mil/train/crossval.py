"""``python -m mil.fit``: patient-grouped k-fold training of the MIL classifier on a bag store.

    python -m mil.fit features/cohort.h5 --labels slides.csv --out runs/r1 \\
        --instance-weights prior --noise-rate audit.json --loss gce --folds 5

Writes ``RUN_DIR/config.yaml`` (resolved), ``splits.json``, ``fold_K/best.ckpt`` (+ logs,
``predictions.csv``, ``metrics.json``), ``predictions.csv`` (out-of-fold), the final models
(``final/``, :mod:`mil.train.final`), the decision rule fitted out-of-fold
(``calibration.json``, :mod:`mil.train.calibration`), the baselines (``baselines/``,
:mod:`mil.train.baselines`), ``metrics.json`` and, with ``--test-labels``,
``test_predictions.csv`` from the models for new slides. A fold whose ``best.ckpt`` and
``metrics.json`` exist is skipped on re-run, and so is a finished final model, so an
interrupted run resumes.

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

from mil.allocator import keep_freed_memory
from mil.config import config_dict, load_yaml, save_config
from mil.errors import CliError
from mil.provenance import feature_provenance
from mil.store import open_store
from mil.train.baselines import NAMES, run_baselines
from mil.train.calibration import DecisionRule, cross_fitted, decide_on_oof
from mil.train.config import RUNTIME_KEYS, FitConfig
from mil.train.conformal import ConformalScores
from mil.train.data import BagDataModule, BagSource
from mil.train.ensemble import ensemble_probs
from mil.train.final import run_final
from mil.train.instance_weights import InstanceWeights, parse_noise_rate
from mil.train.labels import read_labels
from mil.train.metrics import (
    bootstrap_intervals,
    comparison_table,
    slide_metrics,
    summarize_folds,
    summary_table,
)
from mil.train.predict import evaluate, predict_cohort
from mil.train.preflight import preflight, save_inputs
from mil.train.reliability import describe as describe_calibration
from mil.train.reliability import multiclass_calibration, reliability_png
from mil.train.splits import check_no_leak, load_splits, make_splits, save_splits
from mil.train.trainer import batch_dtype, build_system, build_trainer, copy_threads, on_cpu

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


def train_fold(cfg: FitConfig, source: Any, label_of: dict[str, int], classes: list[str],
               fold: Any, fold_dir: Path, seed: int, provenance: dict[str, Any]) -> Path | None:
    """Train one fold; returns the best checkpoint path (None on non-zero DDP ranks)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = BagDataModule(source, label_of, fold.train, fold.val, fold.test,
                       batch_size=cfg.batch_size, max_cells=cfg.max_cells or None,
                       workers=cfg.workers, seed=seed, feature_dtype=batch_dtype(cfg),
                       copy_threads=copy_threads(cfg))
    ctx = {"source": source, "classes": classes, "provenance": provenance, "label_of": label_of}
    system = build_system(cfg, ctx, fold.train)
    ckpt = ModelCheckpoint(dirpath=str(fold_dir), filename="best", monitor="val/loss",
                           mode="min", save_top_k=1, save_weights_only=True,
                           auto_insert_metric_name=False, enable_version_counter=False)
    trainer = build_trainer(cfg, fold_dir, cfg.epochs,
                            [ckpt, EarlyStopping("val/loss", patience=cfg.patience, mode="min")])
    trainer.fit(system, datamodule=dm)
    if not trainer.is_global_zero:
        return None
    return Path(ckpt.best_model_path)


def _write_predictions(path: Path, slide_ids: list[str], truth: list[int] | None,
                       probs: Any, classes: list[str], calls: list[int] | None = None) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "truth", "prediction", *(f"prob_{c}" for c in classes)])
        for i, sid in enumerate(slide_ids):
            t = classes[truth[i]] if truth is not None and truth[i] >= 0 else ""
            call = int(probs[i].argmax()) if calls is None else calls[i]
            w.writerow([sid, t, classes[call], *(f"{p:.6f}" for p in probs[i])])


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


def _external(cfg: FitConfig, run_dir: Path) -> dict[str, Any]:
    """The run's models for new slides (final ensemble, else folds) and its baselines on an
    external labelled cohort; writes test_predictions.csv."""
    store = cfg.test_store or cfg.store
    table = read_labels(cfg.test_labels, cfg.classes, open_store(store).slides())
    pred = predict_cohort(run_dir, store, table.slide_ids)
    probs = [p.probs for p in pred.slides]
    _write_predictions(run_dir / "test_predictions.csv", table.slide_ids, table.labels, probs,
                       cfg.classes, [p.call for p in pred.slides])
    rows = evaluate(run_dir, pred, store, table)
    return {**rows["mil"], "models": pred.notes[0], "baselines": rows["baselines"]}


def record_calibration(cfg: FitConfig, run_dir: Path, probs: np.ndarray, truth: list[int],
                       fold_of: list[int], classes: list[str]) -> dict[str, Any]:
    """ECE and Brier of the out-of-fold predictions before and after the run's temperature
    (:mod:`mil.train.reliability`), ``reliability.png``, and the conformal scores of the
    calibrated probabilities (``conformal.json``, :mod:`mil.train.conformal`)."""
    rule = DecisionRule.load(run_dir)
    after = rule.calibrate(probs) if rule is not None else np.asarray(probs, np.float64)
    crossed, _ = cross_fitted(probs, np.asarray(truth), np.asarray(fold_of), classes,
                              cfg.calibration, cfg.threshold)
    cal = multiclass_calibration(probs, after, crossed, truth)
    reliability_png(run_dir / "reliability.png", {"top label, out-of-fold": cal},
                    "confidence (probability of the most probable class)")
    ConformalScores.build("multiclass", classes, after, np.asarray(truth)).save(run_dir)
    return cal


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
           "provenance": provenance, "slide_ids": table.slide_ids,
           "source": BagSource(cfg.store, table.slide_ids, weights, stream=cfg.stream)}
    if on_cpu(cfg) and not ctx["source"].streaming:
        # the batches' buffers stay on the heap: no page faults per step. Not when streaming:
        # there the heap grew with every bag read (3.8 GB peak RSS after 160 steps of a
        # 4,000-bag store, 1.5 GB without the setting); streaming trims it instead
        # (BagSource, mil.allocator.trim_freed_memory)
        keep_freed_memory()
    # every input is checked: only now does the run folder get written (by rank 0 only)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        save_config(cfg, run_dir / "config.yaml")
        save_inputs(run_dir, inputs)
    if new_splits and _is_rank_zero():
        save_splits(folds, run_dir / "splits.json",
                    {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "labels": str(cfg.labels)})
    results = [_run_fold(cfg, k, fold, ctx) for k, fold in enumerate(folds)]
    final = run_final(cfg, ctx, run_dir, len(folds), _is_rank_zero())  # every DDP rank trains
    if any(r is None for r in results):
        return None
    ids = [s for r in results for s in r["slide_ids"]]
    truth = [y for r in results for y in r["labels"]]
    probs = np.concatenate([r["probs"] for r in results])
    _write_predictions(run_dir / "predictions.csv", ids, truth, probs, table.classes)
    per_fold = [r["metrics"] for r in results]
    pooled = slide_metrics(truth, probs, table.classes)
    pooled["ci95"] = bootstrap_intervals(truth, probs, len(table.classes), seed=cfg.seed)
    fold_of = [k for k, r in enumerate(results) for _ in r["labels"]]
    decision = decide_on_oof(probs, truth, fold_of, table.classes, cfg.calibration,
                             cfg.threshold, run_dir)
    out = {"classes": table.classes, "folds": per_fold, "mean_sd": summarize_folds(per_fold),
           "pooled": pooled, "decision": decision,
           "calibration": record_calibration(cfg, run_dir, probs, truth, fold_of, table.classes)}
    if cfg.baselines:
        out["baselines"] = run_baselines(cfg.store, ctx["slide_ids"], ctx["label_of"], folds,
                                         table.classes, run_dir, cfg.seed)
    if final is not None:
        out["final"] = {k: final[k] for k in ("epochs", "fold_best_epochs", "seeds", "n_slides")}
    if cfg.test_labels:
        out["external"] = _external(cfg, run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(report(out))
    return out


def report(out: dict[str, Any]) -> str:
    """The printed summary: the fold table with the baselines, the decision rule, the final
    models and, with --test-labels, the external cohort."""
    others = {NAMES[n]: (b["mean_sd"], b["pooled"]) for n, b in out.get("baselines", {}).items()
              if "pooled" in b}
    lines = [summary_table(out["folds"], out["mean_sd"], out["pooled"], others)]
    d = out["decision"]
    cut = f", threshold {d['threshold']:.3f}" if d["threshold"] is not None else ""
    lines.append(f"decision rule: temperature {d['temperature']:.3f}{cut}; out-of-fold NLL "
                 f"{d['nll_raw']:.3f} -> {d['nll_calibrated']:.3f}; cross-fitted balanced "
                 f"accuracy {d['cross_fitted']['balanced_accuracy']:.3f} (argmax "
                 f"{out['pooled']['balanced_accuracy']:.3f})")
    if "calibration" in out:
        lines.append(describe_calibration(out["calibration"]))
    if "final" in out:
        f = out["final"]
        lines.append(f"final models: {len(f['seeds'])} seed(s) on all {f['n_slides']} labelled "
                     f"slides for {f['epochs']} epochs (fold best epochs {f['fold_best_epochs']})")
    if "external" in out:
        e = out["external"]
        rows = {"MIL": e, **{NAMES[n]: b for n, b in e["baselines"].items() if "calls" in b}}
        lines += [f"external cohort, {e['n_slides']} slides ({e['models']}):",
                  comparison_table(rows, out["classes"])]
    return "\n".join(lines)
