"""Mutation panels and calibrated, conformal answers on synthetic cohorts (issue 15).

    nice -n 10 /work/venv/bin/python experiments/multilabel_panel/run.py          # everything
    nice -n 10 /work/venv/bin/python experiments/multilabel_panel/run.py --until features

Three cohorts, each synthesized, extracted (tf_efficientnet_lite0), blast-filtered (fit on the
noisy expert labels, then predict) and fitted with 5-fold patient-grouped CV:

- ``panel``: ``mil.synth --task multilabel`` (NPM1 30%, FLT3-ITD 20% mostly with NPM1,
  CEBPA 10%), ``mil.fit --task multilabel``: per-target AUROC with 95% bootstrap intervals,
  MIL against the mean-pooling + logistic-regression baseline (all cells);
- ``panel_faint``: the same panel with fainter cues (15-30% of the blasts show them, instead
  of 50-70%);
- ``default``: the default 4-class cohort, ``mil.fit``: ECE and Brier of the out-of-fold
  predictions before and after temperature scaling.

On both, split-conformal coverage at ALPHA = 0.1 over 20 random calibration/test halves of
the run's stored out-of-fold nonconformity scores, with the mean set size. Generated data go to
``--work`` (default ``work/`` here, git-ignored); a step whose output exists is skipped, so a
rerun resumes. Writes ``results.json`` beside this script and the results block of README.md
(``--table`` rewrites the block from an existing results.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from mil.cli import run_command, stage_command

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
COHORTS = {  # name -> (synth flags, fit flags)
    "panel": (["--task", "multilabel", "--slides", "80", "--cells", "48"],
              ["--task", "multilabel"]),
    "panel_faint": (["--task", "multilabel", "--slides", "80", "--cells", "48", "--cue-min",
                     "0.15", "--cue-max", "0.3"], ["--task", "multilabel"]),
    "default": (["--slides", "40", "--cells", "64"], []),
}
PANELS = ("panel", "panel_faint")


def call(module: str, argv: list[str]) -> None:
    print("$ python -m mil." + module + " " + " ".join(argv), flush=True)
    if run_command(stage_command(module), argv) != 0:
        raise SystemExit(f"mil.{module} failed")


def features(work: Path, name: str, seed: int) -> Path:
    """Synthesize, extract and blast-filter one cohort; returns its store."""
    synth, _ = COHORTS[name]
    cohort, store, filt = work / name / "cohort", work / name / "features.h5", work / name / "blast.pt"
    if not (cohort / "cell_labels.csv").exists():
        call("synth", [str(cohort), *synth, "--seed", str(seed), "--overwrite"])
    call("extract", [str(cohort / "images"), str(store), "-q"])
    if not filt.exists():
        call("blast", ["fit", str(store), "--labels", str(cohort / "cell_labels.csv"),
                       "--out", str(filt), "--seed", str(seed)])
    call("blast", ["predict", str(store), "--filter", str(filt)])
    return store


def fit(work: Path, name: str, seed: int, epochs: int) -> Path:
    """The 5-fold CV run of one cohort (blast prior, as the demo); returns its folder."""
    _, flags = COHORTS[name]
    run = work / name / "run"
    if not (run / "metrics.json").exists():
        call("fit", [str(work / name / "features.h5"), "--labels",
                     str(work / name / "cohort" / "slides.csv"), "--out", str(run), *flags,
                     "--instance-weights", "prior", "--folds", "5", "--epochs", str(epochs),
                     "--final-seeds", "1", "--seed", str(seed), "--threads", "2",
                     "--no-progress"])
    return run


def coverage(run: Path, alpha: float, splits: int, seed: int) -> dict[str, dict]:
    """Mean (sd) empirical coverage and mean set size over random calibration/test halves:
    the sets mil.predict writes (top answer always in) and the textbook ones (may be empty)."""
    from mil.train.conformal import ConformalScores, split_coverage

    sc = ConformalScores.load(run)
    return {"predict_sets": split_coverage(sc, alpha, splits, seed),
            "textbook_sets": split_coverage(sc, alpha, splits, seed, nonempty=False)}


def panel_rows(metrics: dict) -> dict:
    """Per target and macro: AUROC [95% interval] of the MIL and of mean pooling (all cells)."""
    rows = {}
    base = metrics["baselines"]["lr_all"]["pooled"]
    for t in metrics["targets"]:
        mil, lr = metrics["pooled"]["per_target"][t], base["per_target"][t]
        rows[t] = {"n_positive": mil["n_positive"], "n_known": mil["n_known"],
                   "mil_auroc": mil["auroc"], "mil_ci95": mil["ci95"]["auroc"],
                   "mean_pool_auroc": lr["auroc"], "mean_pool_ci95": lr["ci95"]["auroc"]}
    rows["macro"] = {"mil_auroc": metrics["pooled"]["macro"]["auroc"],
                     "mil_ci95": metrics["pooled"]["macro"]["ci95"]["auroc"],
                     "mean_pool_auroc": base["macro"]["auroc"],
                     "mean_pool_ci95": base["macro"]["ci95"]["auroc"]}
    return rows


def summary(runs: dict[str, Path], alpha: float, splits: int, seed: int) -> dict:
    metrics = {n: json.loads((r / "metrics.json").read_text()) for n, r in runs.items()}
    cal = metrics["default"]["calibration"]
    return {"auroc": {n: panel_rows(metrics[n]) for n in PANELS},
            "calibration_default": {k: cal[k] for k in ("bins", "ece", "brier")},
            "calibration_panels": {n: metrics[n]["calibration"]["macro"] for n in PANELS},
            "conformal": {n: coverage(r, alpha, splits, seed) for n, r in runs.items()},
            "alpha": alpha, "splits": splits, "machine": platform.processor() or platform.machine()}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ci(v: float | None, ci: list) -> str:
    return f"{_f(v)} [{_f(ci[0])}, {_f(ci[1])}]"


def table(r: dict) -> str:
    """The README's results block, from results.json alone."""
    lines = ["| cohort | target | positive slides | MIL AUROC [95% CI] | mean pooling AUROC [95% CI] |",
             "| --- | --- | --- | --- | --- |"]
    for name, rows in r["auroc"].items():
        for t, v in rows.items():
            pos = f"{v['n_positive']} / {v['n_known']}" if "n_positive" in v else ""
            lines.append(f"| {name} | {t} | {pos} | {_ci(v['mil_auroc'], v['mil_ci95'])} | "
                         f"{_ci(v['mean_pool_auroc'], v['mean_pool_ci95'])} |")
    lines += ["", f"Split-conformal sets at ALPHA = {r['alpha']}, {r['splits']} random "
              "calibration/test halves of the run's out-of-fold slides (mean coverage +- sd, "
              "mean set size):", "",
              "| cohort | sets | coverage | set size | empty sets |", "| --- | --- | --- | --- | --- |"]
    for name, kinds in r["conformal"].items():
        for kind, v in kinds.items():
            per = v.get("per_target")
            cov = (f"{v['coverage_mean']:.3f} (per target: " + ", ".join(
                f"{t} {d['coverage_mean']:.3f}" for t, d in per.items()) + ")") if per else \
                f"{v['coverage_mean']:.3f} +- {v['coverage_sd']:.3f}"
            empty = (np.mean([d["empty_share"] for d in per.values()]) if per
                     else v["empty_share"])
            lines.append(f"| {name} | {kind.replace('_', ' ')} | {cov} | "
                         f"{v['set_size_mean']:.2f} | {empty:.3f} |")
    c = r["calibration_default"]
    lines += ["", f"Calibration of the out-of-fold predictions ({c['bins']} bins):", "",
              "| cohort | ECE before | after (in-sample) | after (cross-fitted) | Brier before | "
              "after (in-sample) | after (cross-fitted) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = {"default (4 classes, top label)": c,
            **{f"{n} (macro over targets)": m for n, m in r["calibration_panels"].items()}}
    for name, m in rows.items():
        e, b = m["ece"], m["brier"]
        lines.append(f"| {name} | {e['before']:.3f} | {e['after']:.3f} | "
                     f"{e['after_cross_fitted']:.3f} | {b['before']:.3f} | {b['after']:.3f} | "
                     f"{b['after_cross_fitted']:.3f} |")
    return "\n".join(lines)


def write_readme(r: dict) -> None:
    path = HERE / "README.md"
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{table(r)}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--until", choices=["features", "fit", "all"], default="all")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--table", action="store_true", help="only rewrite README.md's table")
    args = p.parse_args()
    if args.table:
        write_readme(json.loads((HERE / "results.json").read_text(encoding="utf-8")))
        return
    t0 = time.perf_counter()
    for name in COHORTS:
        features(args.work, name, args.seed)
    if args.until == "features":
        return
    runs = {name: fit(args.work, name, args.seed, args.epochs) for name in COHORTS}
    if args.until == "fit":
        return
    out = summary(runs, args.alpha, args.splits, args.seed)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    (HERE / "results.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    write_readme(out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
