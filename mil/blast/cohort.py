"""The blast filter on a new cohort: cohort standardisation, and its calibration on labelled cells.

    python -m mil.blast fit A.h5 --labels a_cells.csv --out f.pt --standardise cohort
    python -m mil.blast predict B.h5 --filter f.pt --labels b_cells.csv [--report b.json]

A filter fitted with ``--standardise cohort`` standardises the features of the store it
annotates by that store's own mean/std (every cell of every slide, float64, streamed), which
undoes a stain or scanner shift of a whole cohort; a store of fewer than ``MIN_COHORT_SLIDES``
slides keeps the training statistics (with a warning). ``train`` (default) keeps the training
cells' statistics; ``none`` uses the raw features. Slides annotated earlier by the same filter are
skipped on re-run, so a store that has since grown keeps their probabilities.

Given expert labels of some of the annotated store's cells, ``predict --labels`` reads the
``blast_prob`` it wrote for them and reports accuracy, balanced accuracy, AUROC, ECE and Brier
score with 95% slide-level bootstrap intervals, beside the filter's own cross-validated figures
on its training cells: how far its probabilities still mean what they say on this cohort.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mil.blast.labels import read_cell_labels
from mil.blast.model import load_filter
from mil.blast.train import cell_metrics, metric_lines
from mil.errors import CliError
from mil.stats import RunningMoments
from mil.store import BLAST_PROB, open_store

log = logging.getLogger("mil.blast")
BOOTSTRAP = 500
MIN_COHORT_SLIDES = 10  # fewer slides do not make a cohort's mean/std (one slide's own signal)
KEYS = ("accuracy", "balanced_accuracy", "auroc", "ece", "brier")


def standardise_for(clf: Any, meta: dict[str, Any], store: Any) -> str:
    """Apply the filter's standardisation mode to ``clf`` for ``store``; returns the mode."""
    mode = str(meta.get("standardise", "train"))
    if mode == "cohort" and len(store.slides()) < MIN_COHORT_SLIDES:
        log.warning("warning: %s has %d slide(s), fewer than %d to re-estimate the feature "
                    "mean/std from; the filter's training statistics are used",
                    store.path, len(store.slides()), MIN_COHORT_SLIDES)
        return "train"
    if mode == "cohort":
        acc = RunningMoments()
        for sid in store.slides():
            acc.update(store.features(sid))
        if acc.n == 0:
            raise CliError(f"{store.path}: no cells to take the cohort's mean/std from")
        clf.set_stats(acc.mean, acc.std)
        log.info("standardisation: cohort (mean/std re-estimated on the %d cells of the %d "
                 "slides of %s)", acc.n, len(store.slides()), store.path)
    return mode


def labelled_probs(store: Any, labels: dict[tuple[str, str], int], source: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels (M,), stored blast_prob (M,), slide index (M,)) of the labelled cells."""
    ys, ps, gs = [], [], []
    by_slide: dict[str, dict[str, int]] = {}
    for (sid, cid), y in labels.items():
        by_slide.setdefault(sid, {})[cid] = y
    for g, sid in enumerate(sorted(by_slide)):
        if sid not in store:
            raise CliError(f"{source}: slide '{sid}' is not in {store.path}")
        prob = store.annotation(sid, BLAST_PROB)
        if prob is None:
            raise CliError(f"slide '{sid}' of {store.path} has no {BLAST_PROB}")
        row_of = {c: i for i, c in enumerate(store.strings(sid, "cell_ids"))}
        absent = [c for c in by_slide[sid] if c not in row_of]
        if absent:
            raise CliError(f"{source}: cell '{absent[0]}' of slide '{sid}' is not in {store.path}")
        cells = sorted(by_slide[sid])
        ys.append([by_slide[sid][c] for c in cells])
        ps.append(np.asarray(prob)[[row_of[c] for c in cells]])
        gs.append([g] * len(cells))
    return (np.concatenate(ys).astype(np.int64), np.concatenate(ps).astype(np.float64),
            np.concatenate(gs))


def calibration_report(store_path: str, labels_path: str, filter_path: str,
                       out: str | None = None, seed: int = 0) -> dict[str, Any]:
    """The filter's figures on the labelled cells of ``store_path`` (JSON at ``out`` if given)."""
    _, meta = load_filter(filter_path)
    with open_store(store_path, "r") as store:
        y, p, g = labelled_probs(store, read_cell_labels(labels_path), labels_path)
    report: dict[str, Any] = {"store": str(store_path), "labels": str(labels_path),
                              "filter_sha256": meta["sha256"],
                              "standardise": meta.get("standardise", "train"),
                              "n_cells": int(y.size), "n_blast": int(y.sum()),
                              "n_slides": int(np.unique(g).size),
                              **cell_metrics(y, p, g, BOOTSTRAP, seed)}
    cv = meta.get("metrics") or {}
    report["training_cv"] = {k: cv[k]["value"] for k in KEYS if isinstance(cv.get(k), dict)}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def report_text(r: dict[str, Any]) -> str:
    """One line per figure: value [95% interval] (the filter's training CV value)."""
    head = (f"blast filter on {r['n_cells']} labelled cells ({r['n_blast']} blast) of "
            f"{r['n_slides']} slides of {r['store']} (standardise: {r['standardise']}):")
    return "\n".join([head, *metric_lines(r, KEYS, r["training_cv"])])
