"""Blast filter on real cells (Matek et al. 2019, AML-Cytomorphology_LMU subset).

    /work/venv/bin/python experiments/blast_filter_matek/run.py

Protocols (all splits seeded, stratified by cell class, grouped by original cell so that
augmented copies of one cell never sit on both sides):

- easy: myeloblast vs segmented neutrophil (1000 JPEGs), 80/20 train/test split by file.
- hard: the fifteen-class TIFFs (150; blast = MYO or MOB, 20 cells), 2-fold: train on the 1000
  easy cells + one half of fifteen-class, test on the other half, then swap; metrics on the
  pooled 150 held-out predictions. Baseline "easy-only": train on the 1000 easy cells alone.

No patient or slide grouping exists for these files: ``work/manifest.csv`` puts them into
pseudo-slides of about 25 cells (seeded, by original cell) only because the bag store and the
filter's grouped CV need slides. Outputs: ``work/results.json``, ``work/*.png``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
DATA = Path("/work/shared/data/matek_lmu")
STORE = WORK / "features.h5"
CONFIGS = (("linear", "ce"), ("linear", "gce"), ("mlp", "gce"))


def mil(*args: str) -> None:
    print("$ python -m mil." + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", *("mil." + args[0], *args[1:])], check=True)


def original_id(path: str) -> str:
    """The original cell of a file: 'MYO_0203' for fifteen_class/MYO___MYO_0203_0_96_101.tiff."""
    stem = Path(path).stem
    m = re.match(r"^[A-Z]+___([A-Z]+_\d+)_", stem)
    return m.group(1) if m else stem


def read_cells() -> list[dict]:
    with (DATA / "cells.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["cell_id"] = Path(r["path"]).stem
        r["group"] = original_id(r["path"])
        r["y"] = int(r["label"] == "blast")
        r["hard"] = r["path"].startswith("fifteen_class/")
    return rows


def write_manifest(rows: list[dict], size: int = 25, seed: int = 0) -> None:
    """Pseudo-slides of ~``size`` cells, dealt by original cell (copies share a slide)."""
    groups = sorted({r["group"] for r in rows})
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    n_slides = max(1, round(len(rows) / size))
    slide_of = {g: f"P{i % n_slides:02d}" for i, g in enumerate(order)}
    with (WORK / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "cell_id", "path", "code", "label", "original"])
        for r in rows:
            r["slide_id"] = slide_of[r["group"]]
            w.writerow([r["slide_id"], r["cell_id"], str(DATA / r["path"]), r["code"],
                        r["label"], r["group"]])


def split(rows: list[dict], k: int, seed: int) -> list[int]:
    """Fold index per row: stratified by code, grouped by original cell, seeded."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for code in sorted({r["code"] for r in rows}):
        groups = sorted({r["group"] for r in rows if r["code"] == code})
        for i, g in enumerate(groups[j] for j in rng.permutation(len(groups))):
            fold_of[g] = i % k
    return [fold_of[r["group"]] for r in rows]


def fit_eval(name: str, train: list[dict], test: list[dict], model: str, loss: str) -> np.ndarray:
    """``mil.blast fit`` on the train cells; calibrated P(blast) of the test cells."""
    from mil.blast.model import blast_probability, load_filter, predict_logits
    from mil.store import open_store

    f = WORK / "filters" / f"{name}_{model}_{loss}.pt"
    if not f.exists():
        labels = WORK / "labels" / f"{name}.csv"
        labels.parent.mkdir(parents=True, exist_ok=True)
        with labels.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["slide_id", "cell_id", "label"])
            w.writerows([r["slide_id"], r["cell_id"], r["label"]] for r in train)
        mil("blast", "fit", str(STORE), "--labels", str(labels), "--out", str(f),
            "--model", model, "--loss", loss)
    clf, meta = load_filter(f)
    with open_store(STORE) as st:
        feats = []
        for r in test:
            rows = st.strings(r["slide_id"], "cell_ids")
            feats.append(st.features(r["slide_id"], np.array([rows.index(r["cell_id"])])))
    return blast_probability(predict_logits(clf, np.concatenate(feats)), meta["temperature"])


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    from mil import stats

    out = {"n": int(len(y)), "n_blast": int(y.sum())}
    for name, fn, arg in (("accuracy", stats.accuracy, p >= 0.5),
                          ("balanced_accuracy", stats.balanced_accuracy, p >= 0.5),
                          ("auroc", stats.auroc, p)):
        out[name] = [fn(y, arg), *stats.bootstrap_ci(fn, y, arg, n=1000, seed=0)]
    return out


def hard_predictions(easy: list[dict], hard: list[dict], model: str, loss: str) -> np.ndarray:
    """The hard protocol: 2-fold over the fifteen-class cells, each fold trained on the easy
    cells (minus the test half's original cells) + the other half; pooled P(blast)."""
    hard_fold = split(hard, 2, seed=0)
    oof = np.zeros(len(hard), dtype=np.float32)
    for f in (0, 1):
        test = [r for r, g in zip(hard, hard_fold, strict=True) if g == f]
        groups = {r["group"] for r in test}
        train = [r for r in easy if r["group"] not in groups] + \
            [r for r, g in zip(hard, hard_fold, strict=True) if g != f]
        oof[np.array(hard_fold) == f] = fit_eval(f"hard{f}", train, test, model, loss)
    return oof


def run_protocols(rows: list[dict]) -> dict:
    easy = [r for r in rows if not r["hard"]]
    hard = [r for r in rows if r["hard"]]
    res: dict = {}
    easy_fold = split(easy, 5, seed=0)  # fold 0 (20%) is the test part
    e_train = [r for r, f in zip(easy, easy_fold, strict=True) if f != 0]
    e_test = [r for r, f in zip(easy, easy_fold, strict=True) if f == 0]
    hy = np.array([r["y"] for r in hard])
    for model, loss in CONFIGS:
        key = f"{model}_{loss}"
        p = fit_eval("easy", e_train, e_test, model, loss)
        res.setdefault("easy", {})[key] = metrics(np.array([r["y"] for r in e_test]), p)
        oof = hard_predictions(easy, hard, model, loss)
        res.setdefault("hard", {})[key] = metrics(hy, oof)
        res["hard"][key]["blast_call_rate_by_code"] = {
            c: float(np.mean([p >= 0.5 for r, p in zip(hard, oof, strict=True) if r["code"] == c]))
            for c in sorted({r["code"] for r in hard})}
        groups = {r["group"] for r in hard}
        base = fit_eval("easyonly", [r for r in easy if r["group"] not in groups], hard, model,
                        loss)
        res.setdefault("hard_easy_only", {})[key] = metrics(hy, base)
        print(key, json.dumps({k: res[k][key] for k in ("easy", "hard", "hard_easy_only")}))
    return res


def figure(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = res["hard"]["linear_gce"]["blast_call_rate_by_code"]
    codes = list(rates)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(codes, [rates[c] for c in codes],
           color=["tab:red" if c in ("MYO", "MOB") else "tab:blue" for c in codes])
    ax.set_ylabel("share called blast")
    ax.set_title("fifteen-class held-out cells, linear+gce (red: true blast classes)")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(WORK / "blast_calls_by_class.png", dpi=110)


def main() -> None:
    WORK.mkdir(exist_ok=True)
    rows = read_cells()
    write_manifest(rows)
    mil("extract", str(WORK / "manifest.csv"), str(STORE), "-q")
    res = run_protocols(rows)
    figure(res)
    (WORK / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    shutil.copy(WORK / "blast_calls_by_class.png", HERE / "blast_calls_by_class.png")


if __name__ == "__main__":
    main()
