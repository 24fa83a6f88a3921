"""``mil.blast fit``: slide-grouped cross-validation, temperature, the final filter (with
``--corrections``: the reviewed cells' consensus in place of their labels)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mil import stats
from mil.blast.config import FilterConfig
from mil.blast.labels import read_cell_labels
from mil.blast.model import (
    blast_probability,
    fit_temperature,
    grouped_folds,
    predict_logits,
    save_filter,
    train_classifier,
)
from mil.config import config_dict
from mil.errors import CliError
from mil.provenance import feature_provenance
from mil.store import BagStore, open_store
from mil.store.schema import now

log = logging.getLogger("mil.blast")


# -- fit ---------------------------------------------------------------------------------------
def gather_labelled(store: BagStore, labels: dict[tuple[str, str], int], source: str,
                    allow_missing: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(features (M, D) float32, labels (M,), slide index (M,), (slide_id, cell_id) of each)
    of the labelled cells."""
    by_slide: dict[str, dict[str, int]] = {}
    for (sid, cid), y in labels.items():
        by_slide.setdefault(sid, {})[cid] = y
    absent_slides = sorted(s for s in by_slide if s not in store)
    xs, ys, gs, absent_cells, keys = [], [], [], [], []
    for g, sid in enumerate(sorted(set(by_slide) - set(absent_slides))):
        row_of = {c: i for i, c in enumerate(store.strings(sid, "cell_ids"))}
        cells = sorted(by_slide[sid])
        absent_cells += [(sid, c) for c in cells if c not in row_of]
        cells = [c for c in cells if c in row_of]
        if not cells:
            continue
        rows = np.array([row_of[c] for c in cells])
        keys += [(sid, c) for c in cells]
        xs.append(store.features(sid, rows).astype(np.float32))
        ys.append(np.array([by_slide[sid][c] for c in cells], dtype=np.int64))
        gs.append(np.full(len(cells), g, dtype=np.int64))
    n_absent = len(absent_cells) + sum(len(by_slide[s]) for s in absent_slides)
    if n_absent:
        what = (f"{source}: {n_absent} of {len(labels)} labelled cells are not in {store.path} "
                f"({len(absent_slides)} absent slide(s)"
                + (f", e.g. '{absent_slides[0]}'" if absent_slides else "")
                + (f"; e.g. cell '{absent_cells[0][1]}' of slide '{absent_cells[0][0]}'"
                   if absent_cells else "") + ")")
        if not allow_missing:
            raise CliError(what + "; fix the labels or pass --allow-missing to skip them")
        log.warning("warning: %s; skipped", what)
    if not xs:
        raise CliError(f"{source}: none of the labelled cells is in {store.path}")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), keys


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   cfg: FilterConfig) -> dict[str, Any]:
    """Slide-grouped CV: out-of-fold logits, cross-fitted calibrated probs, temperature."""
    folds = grouped_folds(groups, y, k=cfg.folds, seed=cfg.seed)
    oof = np.zeros((len(y), 2), dtype=np.float32)  # (M, 2)
    for f in range(cfg.folds):
        test = folds == f
        if len(np.unique(y[~test])) < 2:
            raise CliError(f"blast filter: fold {f} has one class only in its training slides; "
                           "lower --folds or label more slides")
        clf = train_classifier(x[~test], y[~test], **cfg.train_kwargs())
        oof[test] = predict_logits(clf, x[test])
        log.info("fold %d/%d: %d train, %d held-out cells", f + 1, cfg.folds,
                 int((~test).sum()), int(test.sum()))
    calibrated = np.zeros(len(y), dtype=np.float32)
    for f in range(cfg.folds):  # temperature for fold f fitted on the other folds' held-out cells
        test = folds == f
        calibrated[test] = blast_probability(oof[test], fit_temperature(oof[~test], y[~test]))
    return {"folds": folds, "oof_logits": oof, "calibrated": calibrated,
            "temperature": fit_temperature(oof, y)}


def cell_metrics(y: np.ndarray, probs: np.ndarray, groups: np.ndarray, n_boot: int, seed: int,
                 raw: np.ndarray | None = None) -> dict[str, Any]:
    """Point estimates and 95% slide-level bootstrap intervals of accuracy, balanced accuracy,
    AUROC, ECE and Brier score of blast probabilities (+ the ECE of ``raw`` ones, if given)."""
    pred = (probs >= 0.5).astype(np.int64)
    fns = {
        "accuracy": (stats.accuracy, (y, pred)),
        "balanced_accuracy": (stats.balanced_accuracy, (y, pred)),
        "auroc": (stats.auroc, (y, probs)),
        "ece": (lambda a, b: stats.expected_calibration_error(b, a), (y, probs)),
        "brier": (lambda a, b: stats.brier_score(b, a), (y, probs)),
    }
    if raw is not None:
        fns["ece_uncalibrated"] = (lambda a, b: stats.expected_calibration_error(b, a), (y, raw))
    out: dict[str, Any] = {}
    for name, (fn, arrays) in fns.items():
        ci = stats.bootstrap_ci(fn, *arrays, n=n_boot, seed=seed, groups=groups) if n_boot \
            else (float("nan"), float("nan"))
        out[name] = {"value": float(fn(*arrays)), "ci": [ci[0], ci[1]]}
    return out


def labelled_cells(cfg: FilterConfig) -> dict[str, Any]:
    """The labelled cells of ``cfg.labels`` (with ``cfg.corrections`` applied) from the store:
    ``x`` (M, D), ``y`` (M,), ``groups`` (M,) slide index, ``keys``, store ``attrs``."""
    from mil.blast.score import apply_corrections

    labels = read_cell_labels(cfg.labels)  # type: ignore[arg-type]
    corrections = None
    if cfg.corrections:
        labels, corrections = apply_corrections(labels, Path(cfg.corrections))
        log.info("corrections from %s: %s", cfg.corrections,
                 ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in corrections.items()))
    with open_store(cfg.store, "r") as store:  # type: ignore[arg-type]
        attrs = store.attrs
        x, y, groups, keys = gather_labelled(store, labels, str(cfg.labels), cfg.allow_missing)
    log.info("%d labelled cells (%d blast) on %d slides, %d dims", len(y), int(y.sum()),
             len(np.unique(groups)), x.shape[1])
    return {"x": x, "y": y, "groups": groups, "keys": keys, "attrs": attrs,
            "corrections": corrections}


def fit(cfg: FilterConfig) -> dict[str, Any]:
    """Cross-validate, fit the temperature, train on all labelled cells and save the filter."""
    data = labelled_cells(cfg)
    x, y, groups, attrs = data["x"], data["y"], data["groups"], data["attrs"]
    cv = cross_validate(x, y, groups, cfg)
    raw = blast_probability(cv["oof_logits"])
    metrics = cell_metrics(y, cv["calibrated"], groups, cfg.bootstrap, cfg.seed, raw)
    metrics.update({"n_cells": int(len(y)), "n_blast": int(y.sum()),
                    "n_slides": int(len(np.unique(groups))), "folds": cfg.folds,
                    "temperature": cv["temperature"], "loss": cfg.loss, "model": cfg.model,
                    "labels": "given (possibly noisy) cell labels, out-of-fold",
                    "corrections": data["corrections"],
                    "ci": "95% percentile bootstrap over slides"})
    clf = train_classifier(x, y, **cfg.train_kwargs())
    out = Path(cfg.out)  # type: ignore[arg-type]
    sha = save_filter(out, clf, temperature=cv["temperature"], standardise=cfg.standardise,
                      provenance={**feature_provenance(attrs), "weights": attrs.get("weights"),
                                  "store": str(cfg.store)},
                      metrics=metrics, config=config_dict(cfg), created=now())
    metrics["filter_sha256"] = sha
    out.with_suffix(".metrics.json").write_text(json.dumps(metrics, indent=1) + "\n",
                                                encoding="utf-8")
    return metrics


def metric_lines(m: dict[str, Any], keys: tuple[str, ...],
                 ref: dict[str, float] | None = None) -> list[str]:
    """One line per metric: value [lo, hi], and ``ref``'s value beside it when it has one."""
    lines = []
    for k in keys:
        lo, hi = m[k]["ci"]
        beside = f"   (training CV {ref[k]:.3f})" if ref and k in ref else ""
        lines.append(f"  {k:18s} {m[k]['value']:.3f}  [{lo:.3f}, {hi:.3f}]{beside}")
    return lines


def metrics_text(m: dict[str, Any]) -> str:
    """The fit's summary: a head line, then one line per metric."""
    head = (f"{m['n_cells']} cells ({m['n_blast']} blast) on {m['n_slides']} slides, "
            f"{m['folds']}-fold slide-grouped CV, loss={m['loss']}, T={m['temperature']:.3f}")
    keys = ("accuracy", "balanced_accuracy", "auroc", "ece", "ece_uncalibrated")
    return "\n".join([head, *metric_lines(m, keys)])
