"""``python -m mil.fit --task multilabel``: patient-grouped k-fold training of a multi-label MIL
head (one gated-attention branch and one sigmoid per target) on a bag store.

The same recipe as :mod:`mil.train.crossval` (folds resume, final models, baselines) with what
differs for targets that co-occur: labels from :mod:`mil.train.panel_labels` (unknown = masked),
folds by iterative stratification (:mod:`mil.train.panel_splits`), the masked binary loss with
the positives of each target weighted by negatives / positives of the training slides (in place
of class-balanced batches), per-target metrics (:mod:`mil.train.panel_metrics`) and a per-target
decision rule (:mod:`mil.train.panel_calibration`). ``predictions.csv`` holds ``truth_<t>``,
``prob_<t>`` (out-of-fold, uncalibrated) and ``call_<t>`` (cross-fitted rule) per target.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mil.config import save_config
from mil.errors import CliError
from mil.outputs import require_writable
from mil.provenance import feature_provenance
from mil.store import open_store
from mil.train.config import FitConfig
from mil.train.conformal import ConformalScores
from mil.train.crossval import _check_resume, _is_rank_zero, quiet_lightning, train_fold
from mil.train.data import BagSource
from mil.train.ensemble import ensemble_probs
from mil.train.final import run_final
from mil.train.instance_weights import InstanceWeights, parse_noise_rate
from mil.train.panel_baselines import panel_baselines
from mil.train.panel_calibration import cross_fitted, fit_panel_rule
from mil.train.panel_csv import write_panel_predictions
from mil.train.panel_labels import PanelTable, check_targets, read_panel
from mil.train.panel_metrics import panel_metrics, panel_table
from mil.train.panel_splits import make_panel_splits
from mil.train.preflight import check_resumed_inputs, fingerprints, save_inputs
from mil.train.reliability import describe as describe_calibration
from mil.train.reliability import panel_calibration, reliability_png
from mil.train.splits import check_no_leak, load_splits, save_splits

log = logging.getLogger("mil")
BRANCHED = "gated-multibranch"


def _folds(cfg: FitConfig, table: PanelTable, run_dir: Path) -> tuple[list[Any], bool]:
    own = run_dir / "splits.json"
    source = cfg.split_file or (own if own.is_file() else None)
    if source is not None:
        folds, _ = load_splits(source)
        extra = sorted({s for f in folds for s in f.train + f.val + f.test} - set(table.slide_ids))
        if extra:
            raise CliError(f"{source}: slide(s) without a label: {', '.join(extra[:5])}")
    else:
        folds = make_panel_splits(table.slide_ids, table.y, table.patients, cfg.folds, cfg.seed,
                                  cfg.val_fraction)
    check_no_leak(folds, dict(zip(table.slide_ids, table.patients, strict=True)))
    return folds, source != own


def _run_fold(cfg: FitConfig, k: int, fold: Any, ctx: dict[str, Any]) -> dict[str, Any] | None:
    fold_dir = Path(cfg.out) / f"fold_{k}"
    best, done = fold_dir / "best.ckpt", fold_dir / "done.json"
    if best.is_file() and done.is_file():
        log.info("fold %d: finished earlier, reusing %s", k, best)
    else:
        fold_dir.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        path = train_fold(cfg, ctx["source"], ctx["label_of"], ctx["classes"], fold, fold_dir,
                          cfg.seed + k, ctx["provenance"])
        if path is None:
            return None
        if path != best:
            path.replace(best)
    probs = np.asarray(ensemble_probs([best], ctx["source"], fold.test))  # (n, T)
    done.write_text(json.dumps({"slides": list(fold.test)}) + "\n", encoding="utf-8")
    return {"slide_ids": list(fold.test), "probs": probs}


def fit_panel(cfg: FitConfig) -> dict[str, Any] | None:
    """The whole multi-label cross-validation; returns metrics.json's content (None off rank 0)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    quiet_lightning()
    run_dir = Path(cfg.out)  # type: ignore[arg-type]
    store = open_store(cfg.store)  # type: ignore[arg-type]
    table = read_panel(cfg.labels, cfg.targets, store.slides())  # type: ignore[arg-type]
    check_targets(table, cfg.labels, cfg.folds)  # type: ignore[arg-type]
    noise = parse_noise_rate(cfg.noise_rate)
    model = BRANCHED if cfg.model == "gated" else cfg.model
    if model != cfg.model:
        log.info("--task multilabel: one attention branch per target (--model %s)", BRANCHED)
    cfg = replace(cfg, noise_rate=str(noise) if cfg.noise_rate is not None else None,
                  targets=table.targets, model=model, store=Path(cfg.store).resolve())  # type: ignore[arg-type]
    _check_resume(cfg, run_dir)
    require_writable(run_dir, "run folder")
    inputs = fingerprints(cfg, table, store)  # type: ignore[arg-type]
    check_resumed_inputs(run_dir, inputs)
    folds, new_splits = _folds(cfg, table, run_dir)
    weights = InstanceWeights(cfg.instance_weights, cfg.filter_threshold, cfg.prior_strength, noise)
    ctx = {"label_of": table.label_of(), "classes": table.targets, "weights": weights,
           "provenance": feature_provenance(store.attrs), "slide_ids": table.slide_ids,
           "source": BagSource(cfg.store, table.slide_ids, weights, stream=cfg.stream)}
    run_dir.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        save_config(cfg, run_dir / "config.yaml")
        save_inputs(run_dir, inputs)
        if new_splits:
            save_splits(folds, run_dir / "splits.json", {"seed": cfg.seed, "task": "multilabel",
                        "val_fraction": cfg.val_fraction, "labels": str(cfg.labels)})
    results = [_run_fold(cfg, k, fold, ctx) for k, fold in enumerate(folds)]
    final = run_final(cfg, ctx, run_dir, len(folds), _is_rank_zero())
    if any(r is None for r in results):
        return None
    return _summarise(cfg, table, folds, results, final, run_dir)


def _summarise(cfg: FitConfig, table: PanelTable, folds: list[Any], results: list[Any],
               final: dict[str, Any] | None, run_dir: Path) -> dict[str, Any]:
    """predictions.csv, calibration.json, baselines and metrics.json from the folds' outputs."""
    targets = table.targets
    ids = [s for r in results for s in r["slide_ids"]]
    probs = np.concatenate([r["probs"] for r in results])  # (n, T)
    label_of = table.label_of()
    y = np.stack([label_of[s] for s in ids]).astype(np.float64)  # (n, T)
    fold_of = np.array([k for k, r in enumerate(results) for _ in r["slide_ids"]])
    rule = fit_panel_rule(probs, y, targets, cfg.calibration, cfg.threshold)
    rule.save(run_dir)
    cal, cut = cross_fitted(probs, y, fold_of, targets, cfg.calibration, cfg.threshold)
    calls = (cal >= cut).astype(np.int64)
    after = rule.calibrate(probs)  # (n, T) the rule fitted on all of them, as for new slides
    calibration = panel_calibration(probs, after, cal, y, targets)
    reliability_png(run_dir / "reliability.png", calibration["per_target"],
                    "predicted probability of a positive")
    ConformalScores.build("multilabel", targets, after, y).save(run_dir)
    write_panel_predictions(run_dir / "predictions.csv", ids, y, probs, calls, targets)
    out: dict[str, Any] = {"task": "multilabel", "targets": targets,
                           "pooled": panel_metrics(y, probs, targets, calls, seed=cfg.seed),
                           "decision": {"temperatures": rule.temperatures,
                                        "thresholds": rule.thresholds,
                                        "note": "balanced_accuracy: each fold called by the "
                                                "thresholds fitted on the other folds"},
                           "calibration": calibration}
    if cfg.baselines:
        out["baselines"] = panel_baselines(cfg.store, table.slide_ids, table.y, targets, folds,  # type: ignore[arg-type]
                                           run_dir, cfg.seed)
    if final is not None:
        out["final"] = {k: final[k] for k in ("epochs", "fold_best_epochs", "seeds", "n_slides")}
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(panel_report(out))
    return out


def panel_report(out: dict[str, Any]) -> str:
    """The printed summary: per-target AUROC with intervals for the MIL and the baselines."""
    from mil.train.baselines import NAMES

    rows = {"MIL": out["pooled"], **{NAMES[n]: b["pooled"] for n, b in
                                     out.get("baselines", {}).items() if "pooled" in b}}
    lines = [panel_table(rows, out["targets"])]
    bal = out["pooled"]["per_target"]
    lines.append("balanced accuracy (cross-fitted thresholds): " + ", ".join(
        f"{t} {bal[t]['balanced_accuracy']:.3f}" for t in out["targets"]
        if bal[t]["balanced_accuracy"] is not None))
    lines.append(describe_calibration(out["calibration"]))
    return "\n".join(lines)
