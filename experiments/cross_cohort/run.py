"""Train on cohort A, predict cohort B: which of cellmil's choices hold on a new cohort (issue 12).

    /work/venv/bin/python experiments/cross_cohort/run.py                       # the table
    /work/venv/bin/python experiments/cross_cohort/run.py --quick --work /tmp/xq  # smoke test

Two synthetic cohorts (``mil.synth``) that differ the way a real training cohort and a later one
did: B has another stain batch (hue and brightness), a 50/50 class balance instead of 73/27, a
spread of cells per slide, 15% smudge cells, and a stain tint that goes with the label in A and
against it in B (``--confounder``). Both are extracted with the default backbone three times
(``--stain-norm none | reinhard-slide | reinhard``); a blast filter is trained on A's noisy
expert labels and scores both cohorts. Then, per seed, ``mil.fit`` on A and ``mil.predict`` on
B for each row of :data:`ROWS`: the first version's flags, each change alone, the defaults, all
together, and the two built-in baselines. Every number is read from ``mil.predict
--test-labels``'s metrics file. A step whose output exists is skipped, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"

# the cohorts: A is where a user trains, B the next cohort (see the module docstring)
# (few blasts, few of them showing the class cue: the cue is rare, the stain tint is not)
HARD = ["--classes", "2", "--cue-min", "0.15", "--cue-max", "0.35", "--blast-min", "0.05",
        "--blast-max", "0.5"]
COHORT_A = ["--slides", "80", "--cells", "32", *HARD, "--class-shares", "0.73,0.27",
            "--confounder", "0.3", "--seed", "11"]
COHORT_B = ["--slides", "30", "--cells", "48", "--cells-spread", "0.5", *HARD,
            "--class-shares", "0.5,0.5", "--confounder", "-0.3", "--stain-hue", "0.1",
            "--brightness", "-0.1", "--artefacts", "0.15", "--seed", "12"]
FIRST = ["--standardise", "none", "--final-seeds", "0", "--calibration", "none",
         "--threshold", "argmax"]


def first_with(**changes: str) -> list[str]:
    """The first version's flags with some of them changed."""
    out = list(FIRST)
    for flag, value in changes.items():
        out[out.index("--" + flag.replace("_", "-")) + 1] = value
    return out


# row -> (stain normalisation of the stores, mil.fit flags, mil.predict flags, which result)
ROWS: dict[str, tuple[str, list[str], list[str], str]] = {
    "first version": ("none", FIRST, [], "mil"),
    "+ standardise cohort": ("none", first_with(standardise="cohort"), [], "mil"),
    "+ final models": ("none", first_with(final_seeds="5"), [], "mil"),
    "+ calibration and balanced threshold": ("none", first_with(calibration="temperature",
                                                            threshold="balanced"), [], "mil"),
    "+ adapt prevalence": ("none", FIRST, ["--adapt-prevalence"], "mil"),
    "+ stain norm od-slide": ("od-slide", FIRST, [], "mil"),
    "+ stain norm reinhard-slide": ("reinhard-slide", FIRST, [], "mil"),
    "defaults (12a)": ("none", [], [], "mil"),
    "defaults (12a) + adapt prevalence": ("none", [], ["--adapt-prevalence"], "mil"),
    "defaults (12a) + od-slide": ("od-slide", [], [], "mil"),
    "all together (od-slide + adapt prevalence)": ("od-slide", [], ["--adapt-prevalence"], "mil"),
    "baseline: mean of all cells + LR": ("none", FIRST, [], "lr_all"),
    "baseline: mean of predicted blasts + LR": ("none", FIRST, [], "lr_blast"),
    "baseline: mean of all cells + LR (od-slide)": ("od-slide", [], [], "lr_all"),
    "baseline: mean of predicted blasts + LR (od-slide)": ("od-slide", [], [], "lr_blast"),
}
# rows run with every seed of --seeds; the others with --seeds-other (compute on 2 cores)
FULL_ROWS = {"first version", "defaults (12a) + od-slide",
             "all together (od-slide + adapt prevalence)", "baseline: mean of all cells + LR (od-slide)",
             "baseline: mean of predicted blasts + LR (od-slide)"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--work", type=Path, default=HERE / "work", help="work folder (git-ignored)")
    a("--quick", action="store_true", help="smoke test: tiny cohorts, 2 epochs, 2 folds, 1 seed")
    a("--seeds", default="0,1,2,3,4", help="mil.fit seeds of the main rows, comma-separated")
    a("--seeds-other", default="0,1,2", help="seeds of the other rows (each change alone)")
    a("--rows", help="only these rows (names separated by ';', default all)")
    a("--epochs", type=int, default=100, help="mil.fit --epochs (default mil.fit's)")
    a("--patience", type=int, default=20, help="mil.fit --patience (default mil.fit's)")
    a("--folds", type=int, default=5, help="mil.fit --folds")
    a("--jobs", type=int, default=2, help="fits at once (each with --threads)")
    a("--threads", type=int, default=1, help="torch threads per fit")
    a("--readme", type=Path, help="README whose results block is rewritten (default: ours)")
    return p


def run(cmd: list[str], log: Path) -> None:
    """``python -m mil.<cmd>`` with output into ``log``; a failure stops the experiment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ python -m mil." + " ".join(cmd), flush=True)
    with log.open("w") as fh:
        rc = subprocess.run([sys.executable, "-m", "mil." + cmd[0], *cmd[1:]], stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    if rc:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"mil.{cmd[0]} failed (exit {rc}); log: {log}")


def prepare(a: argparse.Namespace) -> None:
    """Cohorts, stores (one per stain normalisation), blast filter and its scores."""
    w, quick = a.work, (["--slides", "12", "--cells", "8", "--image-size", "48"] if a.quick else [])
    for name, flags in (("A", COHORT_A), ("B", COHORT_B)):
        if not (w / name / "cells.csv").exists():
            run(["synth", str(w / name), *flags, *quick, "--workers", "2", "--overwrite"],
                w / "logs" / f"synth_{name}.log")
    tiny = ["--backbone", "test_efficientnet", "--weights", "none", "--image-size", "32"] if a.quick else []
    for norm in sorted({r[0] for r in ROWS.values()}):
        for name in ("A", "B"):
            store = w / f"{name}_{norm}.h5"
            run(["extract", str(w / name / "images"), str(store), "--stain-norm", norm, "-q", *tiny],
                w / "logs" / f"extract_{name}_{norm}.log")  # resumable: complete slides skipped
        flt = w / f"filter_{norm}.pt"
        if not flt.exists():
            run(["blast", "fit", str(w / f"A_{norm}.h5"), "--labels", str(w / "A" / "cell_labels.csv"),
                 "--out", str(flt)], w / "logs" / f"filter_{norm}.log")
        run(["blast", "predict", str(w / f"A_{norm}.h5"), "--filter", str(flt)],
            w / "logs" / f"score_A_{norm}.log")
        run(["blast", "predict", str(w / f"B_{norm}.h5"), "--filter", str(flt),
             "--labels", str(w / "B" / "cell_labels_truth.csv")], w / "logs" / f"score_B_{norm}.log")


def fit_key(norm: str, fit_flags: list[str], seed: int) -> str:
    """One mil.fit run serves every row with the same store and flags."""
    tag = "defaults" if not fit_flags else "_".join(f.lstrip("-") for f in fit_flags)
    return f"{norm}/{tag}/seed{seed}"


def fit_and_predict(a: argparse.Namespace, row: str, seed: int) -> dict:
    norm, fit_flags, pred_flags, which = ROWS[row]
    w = a.work
    run_dir = w / "runs" / fit_key(norm, fit_flags, seed)
    if not (run_dir / "metrics.json").exists():
        budget = ["--epochs", "2", "--folds", "2"] if a.quick else [
            "--epochs", str(a.epochs), "--patience", str(a.patience), "--folds", str(a.folds)]
        run(["fit", str(w / f"A_{norm}.h5"), "--labels", str(w / "A" / "slides.csv"),
             "--out", str(run_dir), "--instance-weights", "prior", *fit_flags, *budget,
             "--seed", str(seed), "--threads", str(a.threads), "--no-progress"],
            run_dir.with_suffix(".fit.log"))
    suffix = "adapt" if pred_flags else "plain"
    out = run_dir / f"B_{suffix}.csv"
    metrics = out.with_suffix(".metrics.json")
    if not metrics.exists():
        run(["predict", str(run_dir), "--store", str(w / f"B_{norm}.h5"), "--out", str(out),
             "--test-labels", str(w / "B" / "slides.csv"), *pred_flags], out.with_suffix(".log"))
    return json.loads(metrics.read_text())


def pick(m: dict, which: str) -> dict:
    """AUROC, balanced accuracy and the calls per class of the MIL or one baseline."""
    if which == "mil":
        return m["mil"]
    return m["baselines"][which]


def em_prevalence(metrics: dict) -> dict[str, float] | None:
    """The class prevalence ``mil.predict --adapt-prevalence`` estimated (from its notes)."""
    import re

    for note in metrics.get("notes", []):
        m = re.search(r"by EM over \d+ slides: ([^\n]*)", note)
        if m:
            return {k: float(v) for k, v in re.findall(r"(\S+) ([0-9.]+) \(training", m.group(1))}
    return None


def summarise(results: dict[str, list[dict]], full: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for row, per_seed in results.items():
        r = {"row": row, "n_seeds": len(per_seed)}
        em = [em_prevalence(m) for m in full[row]]
        if ROWS[row][3] == "mil" and all(em):
            r["em_prevalence"] = em
            r["balanced_accuracy_fixed_rule"] = [m["mil_fixed_rule"]["balanced_accuracy"]
                                                 for m in full[row]]
        for key in ("macro_auroc", "balanced_accuracy"):
            v = np.array([s[key] for s in per_seed], float)
            r[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                      "values": v.round(4).tolist()}
        r["calls"] = [s.get("calls") for s in per_seed]
        rows.append(r)
    return rows


def truth_counts(slides_csv: Path) -> list[int]:
    """Slides per class of a labels CSV, in class-name order (mil.fit's default order)."""
    import csv

    with slides_csv.open(newline="") as fh:
        labels = [r["label"] for r in csv.DictReader(fh)]
    return [labels.count(c) for c in sorted(set(labels))]


def em_lines(rows: list[dict], truth: list[int]) -> list[str]:
    """The EM prevalence estimates, and balanced accuracy at the fixed vs the adapted call."""
    share = truth[0] / sum(truth)
    out = []
    for r in rows:
        if "em_prevalence" not in r:
            continue
        first = sorted(r["em_prevalence"][0])[0]
        est = [e[first] for e in r["em_prevalence"]]
        fixed, adapted = r["balanced_accuracy_fixed_rule"], r["balanced_accuracy"]["values"]
        out.append(f"- {r['row']}: EM prevalence of {first} on B {np.mean(est):.3f} +- "
                   f"{np.std(est, ddof=1) if len(est) > 1 else 0:.3f} (truth {share:.2f}); balanced "
                   f"accuracy at the fixed call {np.mean(fixed):.3f}, at the adapted call "
                   f"{np.mean(adapted):.3f}")
    return out


def table(rows: list[dict], truth: list[int]) -> list[str]:
    out = ["| run (train on A, predict B) | AUROC on B | balanced accuracy on B "
           f"| calls per class on B, seed by seed (truth {'/'.join(map(str, truth))}) | seeds |",
           "|---|---|---|---|---|"]
    for r in rows:
        au, ba = r["macro_auroc"], r["balanced_accuracy"]
        calls = ", ".join("/".join(map(str, c)) for c in r["calls"])
        out.append(f"| {r['row']} | {au['mean']:.3f} +- {au['sd']:.3f} "
                   f"| {ba['mean']:.3f} +- {ba['sd']:.3f} | {calls} | {r['n_seeds']} |")
    return out


def machine() -> dict:
    """mil.bench's machine record (CPU, cores, load, versions) plus the git head measured."""
    from mil.bench.machine import machine as bench_machine

    git = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {**bench_machine(), "git_head": git}


def write_readme(path: Path, res: dict) -> str:
    m = res["machine"]
    block = "\n".join([
        START, f"Command: `{res['command']}`  ",
        f"Date: {res['date']}; {m['cores']} CPUs, {m['cpu']}, load average at start "
        f"{m['load_avg_1min']:.1f}; git {m['git_head']}; wall time {res['wall_s']:.0f} s "
        "(steps whose output existed were reused).  ",
        f"mil.fit: `--instance-weights prior --epochs {res['config']['epochs']} --patience "
        f"{res['config']['patience']} --folds {res['config']['folds']}` plus the row's flags; "
        "mean +- sd over seeds.", "", *table(res["rows"], res["truth_B"]), "",
        "Prevalence adaptation (`mil.predict --adapt-prevalence`; cohort A has 27% NPM1):", "",
        *em_lines(res["rows"], res["truth_B"]), END])
    text = path.read_text() if path.exists() else (HERE / "README.md").read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return block


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    a.work = a.work.resolve()
    seeds = [0] if a.quick else [int(s) for s in a.seeds.split(",")]
    other = [0] if a.quick else [int(s) for s in a.seeds_other.split(",")]
    rows = [r.strip() for r in a.rows.split(";")] if a.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown row(s): {unknown}; rows are {list(ROWS)}")
    t0, started, info = time.perf_counter(), datetime.now().astimezone(), machine()
    print(f"work: {a.work}; {info['cores']} CPUs, {info['cpu']}", flush=True)
    prepare(a)
    seeds_of = {row: seeds if row in FULL_ROWS else other for row in rows}
    jobs = [(row, seed) for row in rows for seed in seeds_of[row]]
    # rows sharing a fit must not train it twice at once: one thread per fit key
    by_fit: dict[str, list[tuple[str, int]]] = {}
    for row, seed in jobs:
        by_fit.setdefault(fit_key(ROWS[row][0], ROWS[row][1], seed), []).append((row, seed))
    found: dict[tuple[str, int], dict] = {}

    def do(key: str) -> None:
        for row, seed in by_fit[key]:
            metrics = fit_and_predict(a, row, seed)
            found[(row, seed)] = (pick(metrics, ROWS[row][3]), metrics)

    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        list(pool.map(do, list(by_fit)))
    results = {row: [found[(row, s)][0] for s in seeds_of[row]] for row in rows}
    full = {row: [found[(row, s)][1] for s in seeds_of[row]] for row in rows}
    res = {"command": shlex.join(["python", *sys.argv]), "date": started.isoformat(timespec="seconds"),
           "machine": info, "config": {"epochs": a.epochs, "patience": a.patience, "folds": a.folds,
                                       "seeds": seeds, "seeds_other": other, "cohort_a": COHORT_A, "cohort_b": COHORT_B},
           "wall_s": round(time.perf_counter() - t0, 1), "rows": summarise(results, full),
           "truth_B": truth_counts(a.work / "B" / "slides.csv")}
    out_json = a.work / "results.json" if a.quick else HERE / "results.json"
    out_json.write_text(json.dumps(res, indent=1) + "\n")
    readme = a.readme or (a.work / "README.md" if a.quick else HERE / "README.md")
    print("\n" + write_readme(readme, res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
