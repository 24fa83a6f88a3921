"""Is the synthetic cohort hard in the right way? Mean of all cells vs blasts only.

A linear classifier on each slide's mean embedding of *all* cells is compared with the same
classifier on the mean embedding of its *true blasts only* (an oracle blast filter), with
5-fold patient-grouped CV, several seeds. The synth contract: the all-cells mean must do
clearly worse, because the blast share and the non-blast mix vary by slide and only the blasts
carry the class.

    python experiments/synth_difficulty/run.py                      # synth + extract into work/
    python experiments/synth_difficulty/run.py --cohort C --store S  # reuse an extraction
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def slide_means(store_path: Path, cohort: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per slide: mean embedding of all cells, of true blasts, of non-blasts."""
    from mil.store import open_store

    with (cohort / "cells.csv").open() as fh:
        blast = {(r["slide_id"], r["cell_id"]): r["is_blast"] == "1" for r in csv.DictReader(fh)}
    st = open_store(store_path)
    slides = st.slides()
    out: dict[str, list[np.ndarray]] = {"all cells": [], "true blasts only": [], "non-blasts only": []}
    for sid in slides:
        feats = st.features(sid).astype(np.float32)  # (N, D)
        is_b = np.array([blast[(sid, c)] for c in st.strings(sid, "cell_ids")])
        out["all cells"].append(feats.mean(0))
        out["true blasts only"].append(feats[is_b].mean(0) if is_b.any() else feats.mean(0))
        out["non-blasts only"].append(feats[~is_b].mean(0) if (~is_b).any() else feats.mean(0))
    return slides, {k: np.stack(v) for k, v in out.items()}


def fit_logreg(xt: torch.Tensor, yt: torch.Tensor, n_classes: int, seed: int) -> torch.nn.Linear:
    """L2-regularised multinomial logistic regression, full-batch LBFGS."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(xt.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt) + 1e-2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def logreg_cv(x: np.ndarray, y: np.ndarray, folds: list, index: dict[str, int], seed: int) -> float:
    """Out-of-fold accuracy of an L2 multinomial logistic regression (standardised inputs)."""
    correct = 0
    for fold in folds:
        tr = np.array([index[s] for s in fold.train + fold.val])
        te = np.array([index[s] for s in fold.test])
        mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
        lin = fit_logreg(torch.tensor((x[tr] - mu) / sd), torch.tensor(y[tr]), int(y.max()) + 1, seed)
        pred = lin(torch.tensor((x[te] - mu) / sd)).argmax(1).numpy()
        correct += int((pred == y[te]).sum())
    return correct / len(y)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cohort", type=Path, default=HERE / "work" / "cohort")
    ap.add_argument("--store", type=Path, default=HERE / "work" / "features.h5")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    if not (args.cohort / "slides.csv").exists():
        subprocess.run([sys.executable, "-m", "mil.synth", str(args.cohort)], check=True)
    if not args.store.exists():
        subprocess.run([sys.executable, "-m", "mil.extract", str(args.cohort / "images"),
                        str(args.store)], check=True)
    from mil.train.splits import make_splits

    with (args.cohort / "slides.csv").open() as fh:
        rows = {r["slide_id"]: r for r in csv.DictReader(fh)}
    slides, means = slide_means(args.store, args.cohort)
    classes = sorted({rows[s]["label"] for s in slides})
    y = np.array([classes.index(rows[s]["label"]) for s in slides])
    index = {s: i for i, s in enumerate(slides)}
    results = {}
    for name, x in means.items():
        accs = []
        for seed in range(args.seeds):
            folds = make_splits(slides, [rows[s]["label"] for s in slides],
                                [rows[s]["patient_id"] for s in slides], k=5, seed=seed)
            accs.append(logreg_cv(x, y, folds, index, seed))
        results[name] = {"mean": float(np.mean(accs)), "sd": float(np.std(accs)), "runs": accs}
        print(f"{name:18s} accuracy {np.mean(accs):.3f} +- {np.std(accs):.3f}", flush=True)
    (HERE / "results.json").write_text(json.dumps({"slides": len(slides), **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
