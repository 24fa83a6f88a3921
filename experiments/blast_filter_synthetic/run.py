"""Blast filter on the synthetic cohort: fit (ce vs gce, linear vs mlp), truth check, audit.

    /work/venv/bin/python experiments/blast_filter_synthetic/run.py

Everything goes to ``work/`` (git-ignored) and each step is skipped when its output exists,
so a rerun resumes; delete ``work/`` to start from scratch. Writes ``work/results.json`` and
the figures ``work/*.png`` (copied beside this file for the README).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
COHORT, STORE = WORK / "cohort", WORK / "features.h5"
DEFAULT = ("linear", "gce")
SEEDS = (0, 1, 2)


def mil(*args: str) -> None:
    print("$ python -m mil." + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", *("mil." + args[0], *args[1:])], check=True)


def truth() -> dict[tuple[str, str], int]:
    with (COHORT / "cells.csv").open() as fh:
        return {(r["slide_id"], r["cell_id"]): int(r["is_blast"]) for r in csv.DictReader(fh)}


def label_agreement(true: dict[tuple[str, str], int]) -> dict[str, float]:
    with (COHORT / "cell_labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    agree = [int(r["label"] == "blast") == true[(r["slide_id"], r["cell_id"])] for r in rows]
    return {"n_labelled": len(rows), "agreement_with_truth": float(np.mean(agree))}


def all_probs(filter_path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Calibrated blast probabilities of every cell, computed in memory (store untouched)."""
    from mil.blast.model import blast_probability, load_filter, predict_logits
    from mil.store import open_store

    clf, meta = load_filter(filter_path)
    keys, probs = [], []
    with open_store(STORE) as st:
        for sid in st.slides():
            keys += [(sid, c) for c in st.strings(sid, "cell_ids")]
            probs.append(blast_probability(predict_logits(clf, st.features(sid)),
                                           meta["temperature"]))
    return keys, np.concatenate(probs)


def evaluate(filter_path: Path, true: dict, labelled: set) -> dict[str, float]:
    from mil import stats

    keys, p = all_probs(filter_path)
    y = np.array([true[k] for k in keys])
    unl = np.array([k not in labelled for k in keys])
    cv = json.loads(filter_path.with_suffix(".metrics.json").read_text())
    return {
        "cv_acc_vs_noisy": cv["accuracy"]["value"], "cv_auroc_vs_noisy": cv["auroc"]["value"],
        "acc_true_all": stats.accuracy(y, p >= 0.5),
        "acc_true_unlabelled": stats.accuracy(y[unl], p[unl] >= 0.5),
        "bacc_true_all": stats.balanced_accuracy(y, p >= 0.5),
        "auroc_true_all": stats.auroc(y, p), "ece_true_all": stats.expected_calibration_error(p, y),
        "temperature": cv["temperature"],
    }


def fit_all(true: dict, labelled: set) -> dict[str, dict]:
    """Both losses x both models x 3 seeds at the defaults, and the weak-L2 ablation."""
    runs = [(m, loss, s, None) for m in ("linear", "mlp") for loss in ("ce", "gce") for s in SEEDS]
    runs += [("linear", loss, 0, "0.01") for loss in ("ce", "gce")]
    out = {}
    for model, loss, seed, l2 in runs:
        f = WORK / "filters" / (f"{model}_{loss}_s{seed}" + (f"_l2-{l2}" if l2 else "") + ".pt")
        if not f.exists():
            mil("blast", "fit", str(STORE), "--labels", str(COHORT / "cell_labels.csv"),
                "--out", str(f), "--model", model, "--loss", loss, "--seed", str(seed),
                *(["--l2", l2] if l2 else []))
        out[f.stem] = evaluate(f, true, labelled)
        print(f.stem, json.dumps({k: round(v, 4) for k, v in out[f.stem].items()}), flush=True)
    return out


def audit(model: str, loss: str, true: dict) -> dict:
    """predict -> audit n=200 -> expert column from the truth -> score; vs the measured error."""
    f = WORK / "filters" / f"{model}_{loss}_s0.pt"
    mil("blast", "predict", str(STORE), "--filter", str(f), "--overwrite")
    d = WORK / f"audit_{model}_{loss}"
    mil("blast", "audit", str(STORE), "--n", "200", "--out", str(d), "--seed", "0")
    with (d / "review.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["expert"] = "blast" if true[(r["slide_id"], r["cell_id"])] else "non-blast"
    with (d / "review.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    mil("blast", "audit", "--score", str(d / "review.csv"))
    noise = json.loads((d / "noise.json").read_text())
    keys, p = all_probs(f)
    measured = float(np.mean((p >= 0.5) != np.array([true[k] for k in keys])))
    lo, hi = noise["ci"]
    return {"estimated": noise["error_rate"], "ci": noise["ci"], "measured": measured,
            "contains": lo <= measured <= hi, "unweighted": noise["unweighted_error_rate"],
            "blast_error_rate": noise["blast_error_rate"],
            "nonblast_error_rate": noise["nonblast_error_rate"]}


def coverage(loss: str, true: dict, repeats: int = 200) -> dict:
    """Re-draw the n=200 audit with seeds 0..repeats-1 (in memory, truth as the expert) and
    count how often the re-weighted Wilson interval holds the measured whole-store error."""
    from mil.blast.audit import stratified_sample
    from mil.stats import stratified_proportion

    keys, p = all_probs(WORK / "filters" / f"linear_{loss}_s0.pt")
    wrong = (p >= 0.5) != np.array([true[k] for k in keys])
    measured, share = float(wrong.mean()), float((p >= 0.5).mean())
    hits, widths = 0, []
    for seed in range(repeats):
        rows = [c for _, c in stratified_sample([p], 200, seed)]
        strata = [[r for r in rows if p[r] >= 0.5], [r for r in rows if p[r] < 0.5]]
        rates = [float(wrong[s].mean()) if s else 0.0 for s in strata]
        _, (lo, hi), _ = stratified_proportion(rates, [len(s) for s in strata],
                                               [share, 1 - share])
        hits += lo <= measured <= hi
        widths.append(hi - lo)
    return {"repeats": repeats, "coverage": hits / repeats, "mean_width": float(np.mean(widths))}


def figure(true: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, loss in zip(axes, ("ce", "gce"), strict=True):
        keys, p = all_probs(WORK / "filters" / f"linear_{loss}_s0.pt")
        y = np.array([true[k] for k in keys])
        bins = np.linspace(0, 1, 26)
        ax.hist(p[y == 1], bins, alpha=0.6, label="true blast")
        ax.hist(p[y == 0], bins, alpha=0.6, label="true non-blast")
        ax.set_title(f"linear, {loss}: blast_prob on all 2560 cells")
        ax.set_xlabel("calibrated blast_prob")
    axes[0].set_ylabel("cells")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(WORK / "blast_prob_hist.png", dpi=110)


def main() -> None:
    WORK.mkdir(exist_ok=True)
    if not (COHORT / "cells.csv").exists():
        mil("synth", str(COHORT))
    mil("extract", str(COHORT / "images"), str(STORE), "-q")  # resumable: skips done slides
    true = truth()
    with (COHORT / "cell_labels.csv").open() as fh:
        labelled = {(r["slide_id"], r["cell_id"]) for r in csv.DictReader(fh)}
    results = {"labels": label_agreement(true), "fits": fit_all(true, labelled),
               "audit": {loss: audit("linear", loss, true) for loss in ("ce", "gce")},
               "audit_coverage": {loss: coverage(loss, true) for loss in ("ce", "gce")}}
    mil("blast", "predict", str(STORE), "--filter",
        str(WORK / "filters" / f"{DEFAULT[0]}_{DEFAULT[1]}_s0.pt"), "--overwrite")
    figure(true)
    (WORK / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.copy(WORK / "blast_prob_hist.png", HERE / "blast_prob_hist.png")
    print(json.dumps({k: results[k] for k in ("labels", "audit", "audit_coverage")}, indent=1))


if __name__ == "__main__":
    main()
