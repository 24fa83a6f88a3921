"""The reference paper's protocol on a synthetic cohort: a blast filter trained on expert cell
labels with 0-40% label noise, then 4-class MIL with instance weights none / filter / prior
and gated / mean pooling, 5-fold patient-grouped CV (see README.md).

    /work/venv/bin/python experiments/paper_protocol/run.py               # the full protocol
    /work/venv/bin/python experiments/paper_protocol/run.py --quick --work /tmp/pp   # smoke test

One cohort (images and cell ids do not depend on the label noise), one feature extraction; per
noise level a copy of the store, noisy labels flipped from the true ones (nested: the cells
flipped at 10% are among those flipped at 20%, ...), a filter fit + predict on the copy, an
audit whose expert column is filled from the synth's truth (noise.json, which tempers the
prior). Generated data go to ``--work`` (default ``work/``, git-ignored); a step whose output
exists is skipped, so a rerun resumes. Writes ``results.json`` and the table of README.md
(with ``--quick``: both into the work folder, the committed README is left alone).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
STEPS: list[dict] = []  # {"step", "seconds", "skipped"} in order, for results.json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--work", type=Path, help="work folder (default: work/, with --quick work/quick)")
    a("--quick", action="store_true",
      help="smoke test: 12 slides x 8 cells, noise 0,0.2, 2 epochs, 2 folds (explicit flags win)")
    a("--slides", type=int, help="slides in the cohort (default 40)")
    a("--cells", type=int, help="cells per slide (default 64)")
    a("--epochs", type=int, help="MIL maximum epochs (default 100, mil.fit's)")
    a("--folds", type=int, help="MIL and blast-filter CV folds (default 5)")
    a("--noise", help="label-noise levels, comma-separated (default 0,0.1,0.2,0.3,0.4)")
    a("--mean-weights", default="none,filter",
      help="instance weights run with mean pooling (gated runs all three); 'prior' is left "
           "out by default: mean pooling ignores the attention prior, so it equals 'none'")
    a("--audit-n", type=int, help="cells per audit (default 200); 0 skips the audit and the "
                                  "noise tempering of the prior")
    a("--bootstrap", type=int, help="blast-filter bootstrap replicates (default 200)")
    a("--seed", type=int, default=0, help="seed of the cohort, the label flips, filter and MIL")
    a("--jobs", type=int, default=1, help="MIL fits run at once (each with --threads)")
    a("--threads", type=int, default=1, help="torch threads per MIL fit")
    a("--readme", type=Path, help="README whose results block is rewritten")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the unset options with the full or the --quick defaults."""
    full = {"slides": 40, "cells": 64, "epochs": 100, "folds": 5, "noise": "0,0.1,0.2,0.3,0.4",
            "audit_n": 200, "bootstrap": 200}
    quick = {"slides": 12, "cells": 8, "epochs": 2, "folds": 2, "noise": "0,0.2",
             "audit_n": 20, "bootstrap": 20}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.noise = [float(x) for x in str(args.noise).split(",")]
    args.mean_weights = [m.strip() for m in args.mean_weights.split(",") if m.strip()]
    base = HERE / "work" / ("quick" if args.quick else "")
    args.work = (args.work or base).resolve()
    args.root = args.work / f"s{args.slides}_c{args.cells}_seed{args.seed}"
    args.runs = args.root / f"runs_e{args.epochs}_f{args.folds}"
    args.readme = args.readme or (args.work / "README.md" if args.quick else HERE / "README.md")
    args.results = args.work / "results.json" if args.quick else HERE / "results.json"
    return args


def pct(noise: float) -> str:
    return f"{round(noise * 100):02d}"


def step(name: str, done: bool, fn) -> None:
    """Run ``fn`` unless ``done``; print and record the elapsed time."""
    t0 = time.perf_counter()
    if done:
        print(f"[skip] {name}: output exists", flush=True)
    else:
        print(f"\n== {name}", flush=True)
        fn()
    secs = time.perf_counter() - t0
    STEPS.append({"step": name, "seconds": round(secs, 1), "skipped": done})
    if not done:
        print(f"== {name}: {secs:.1f} s", flush=True)


def mil(*args: str, log: Path | None = None) -> None:
    """``python -m mil.<stage> ...`` in a child process; with ``log``, output goes there."""
    cmd = [sys.executable, "-m", "mil." + args[0], *args[1:]]
    print("$ python -m mil." + " ".join(args) + (f"  > {log}" if log else ""), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"mil.{args[0]} failed (exit {rc}); log: {log}")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def flip_labels(truth_csv: Path, noise: float, seed: int, out: Path) -> None:
    """Exactly round(noise * n) of the n true expert labels flipped (as mil.synth does); one
    seeded permutation for every level, so the flipped sets are nested across levels."""
    rows = read_csv(truth_csv)
    order = np.random.default_rng([seed, 3, 1]).permutation(len(rows))
    flip = set(order[: round(noise * len(rows))].tolist())
    other = {"blast": "non-blast", "non-blast": "blast"}
    lines = ["slide_id,cell_id,label"] + [
        f"{r['slide_id']},{r['cell_id']},{other[r['label']] if i in flip else r['label']}"
        for i, r in enumerate(rows)]
    write_atomic(out, "\n".join(lines) + "\n")


def copy_store(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def audit(store: Path, folder: Path, cohort: Path, n: int, seed: int) -> None:
    """Sample n cells, let the synth's truth play the expert, score -> folder/noise.json."""
    from mil.demo import fill_review_from_truth

    shutil.rmtree(folder / "audit", ignore_errors=True)  # a half-done audit starts over
    mil("blast", "audit", str(store), "--n", str(n), "--out", str(folder / "audit"),
        "--seed", str(seed))
    fill_review_from_truth(folder / "audit" / "review.csv", cohort / "cells.csv")
    mil("blast", "audit", "--score", str(folder / "audit" / "review.csv"),
        "--out", str(folder / "noise.json"))


def noise_level(a: argparse.Namespace, noise: float, store: Path) -> None:
    """Labels, store copy, filter fit + predict and audit for one noise level."""
    d = a.root / f"noise_{pct(noise)}"
    d.mkdir(parents=True, exist_ok=True)
    cohort, tag = a.root / "cohort", f"noise {pct(noise)}%"
    step(f"{tag}: flip labels", (d / "labels.csv").exists(),
         lambda: flip_labels(cohort / "cell_labels_truth.csv", noise, a.seed, d / "labels.csv"))
    step(f"{tag}: copy store", (d / "features.h5").exists(),
         lambda: copy_store(store, d / "features.h5"))
    step(f"{tag}: blast fit", (d / "filter.metrics.json").exists(),
         lambda: mil("blast", "fit", str(d / "features.h5"), "--labels", str(d / "labels.csv"),
                     "--out", str(d / "filter.pt"), "--folds", str(a.folds),
                     "--seed", str(a.seed), "--bootstrap", str(a.bootstrap)))
    step(f"{tag}: blast predict", False,  # resumable: slides done by this filter are skipped
         lambda: mil("blast", "predict", str(d / "features.h5"), "--filter", str(d / "filter.pt"),
                     "--overwrite"))
    if a.audit_n:
        step(f"{tag}: audit (synth truth as the expert)", (d / "noise.json").exists(),
             lambda: audit(d / "features.h5", d, cohort, a.audit_n, a.seed))


def noise_rate(d: Path) -> str:
    """``--noise-rate`` for a prior run: the audit's JSON, or 0.499 when its estimate is >= 0.5
    (a filter no better than chance; mil.fit refuses such a rate, 0.499 flattens the prior)."""
    rate = json.loads((d / "noise.json").read_text())["error_rate"]
    if rate < 0.5:
        return str(d / "noise.json")
    print(f"warning: {d.name}: audited error rate {rate:.3f} >= 0.5; prior tempered with 0.499")
    return "0.499"


def mil_runs(a: argparse.Namespace) -> list[tuple[str, str, str, float | None, list[str]]]:
    """(run name, pooling, weights, noise level or None, extra mil.fit flags) of every fit."""
    out = []
    for pool, modes in (("gated", ["none", "filter", "prior"]), ("mean", a.mean_weights)):
        if "none" in modes:
            out.append((f"{pool}_none", pool, "none", None, []))
        for noise in a.noise:
            d = a.root / f"noise_{pct(noise)}"
            for mode in (m for m in modes if m != "none"):
                extra = ["--noise-rate", noise_rate(d)] if mode == "prior" and a.audit_n else []
                out.append((f"{pool}_{mode}_n{pct(noise)}", pool, mode, noise, extra))
    return out


def fit_one(a: argparse.Namespace, run: tuple) -> None:
    name, pool, mode, noise, extra = run
    out = a.runs / name
    store = a.root / (f"noise_{pct(noise)}/features.h5" if noise is not None else "features.h5")
    t0 = time.perf_counter()
    mil("fit", str(store), "--labels", str(a.root / "cohort" / "slides.csv"), "--out", str(out),
        "--model", pool, "--instance-weights", mode, *extra, "--epochs", str(a.epochs),
        "--folds", str(a.folds), "--seed", str(a.seed), "--threads", str(a.threads),
        "--no-progress", log=a.runs / f"{name}.log")
    m = json.loads((out / "metrics.json").read_text())["pooled"]
    secs = time.perf_counter() - t0
    STEPS.append({"step": f"mil.fit {name}", "seconds": round(secs, 1), "skipped": False})
    print(f"== mil.fit {name}: {secs:.1f} s, pooled accuracy {m['accuracy']:.3f}", flush=True)


def fit_all(a: argparse.Namespace) -> list[tuple]:
    runs = mil_runs(a)
    todo = []
    for run in runs:
        if (a.runs / run[0] / "metrics.json").exists():
            print(f"[skip] mil.fit {run[0]}: output exists", flush=True)
            STEPS.append({"step": f"mil.fit {run[0]}", "seconds": 0.0, "skipped": True})
        else:
            todo.append(run)
    print(f"\n== MIL: {len(todo)} of {len(runs)} fits to run, {a.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        list(pool.map(lambda r: fit_one(a, r), todo))  # list(): re-raises a failure
    return runs


def filter_results(a: argparse.Namespace, noise: float) -> dict:
    """The filter against the true cell types (all / unlabelled cells), its CV agreement with
    the noisy labels, and the audit's estimate of its error."""
    from mil import stats
    from mil.store import open_store

    d, cohort = a.root / f"noise_{pct(noise)}", a.root / "cohort"
    true = {(r["slide_id"], r["cell_id"]): int(r["is_blast"])
            for r in read_csv(cohort / "cells.csv")}
    labels, truth_rows = read_csv(d / "labels.csv"), read_csv(cohort / "cell_labels_truth.csv")
    agree = [x["label"] == t["label"] for x, t in zip(labels, truth_rows, strict=True)]
    labelled = {(r["slide_id"], r["cell_id"]) for r in labels}
    keys, probs = [], []
    with open_store(d / "features.h5") as st:
        for sid in st.slides():
            keys += [(sid, c) for c in st.strings(sid, "cell_ids")]
            probs.append(np.asarray(st.annotation(sid, "blast_prob"), dtype=np.float64))
    p, y = np.concatenate(probs), np.array([true[k] for k in keys])
    unl = np.array([k not in labelled for k in keys])
    cv = json.loads((d / "filter.metrics.json").read_text())
    out = {
        "noise": noise, "n_labelled": len(labels),
        "labels_agree_with_truth": float(np.mean(agree)),
        "cv_acc_vs_noisy": cv["accuracy"]["value"], "cv_acc_vs_noisy_ci": cv["accuracy"]["ci"],
        "cv_auroc_vs_noisy": cv["auroc"]["value"],
        "n_cells": int(y.size), "acc_true_all": stats.accuracy(y, p >= 0.5),
        "acc_true_unlabelled": stats.accuracy(y[unl], p[unl] >= 0.5),
        "auroc_true_all": stats.auroc(y, p), "measured_error": float(np.mean((p >= 0.5) != y)),
    }
    if a.audit_n:
        nz = json.loads((d / "noise.json").read_text())
        out.update(audit_error=nz["error_rate"], audit_error_ci=nz["ci"], audit_n=nz["n"])
    return out


def mil_results(a: argparse.Namespace, runs: list[tuple]) -> list[dict]:
    rows = []
    for name, pool, mode, noise, _ in runs:
        m = json.loads((a.runs / name / "metrics.json").read_text())
        p, ms = m["pooled"], m["mean_sd"]
        rows.append({"run": name, "pooling": pool, "weights": mode, "noise": noise,
                     "acc_mean": ms["accuracy"]["mean"], "acc_sd": ms["accuracy"]["sd"],
                     "auroc_mean": ms["macro_auroc"]["mean"], "auroc_sd": ms["macro_auroc"]["sd"],
                     "acc_pooled": p["accuracy"], "acc_pooled_ci": p["ci95"]["accuracy"],
                     "auroc_pooled": p["macro_auroc"], "auroc_pooled_ci": p["ci95"]["macro_auroc"]})
    return rows


def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def ci(v: float | None, lo_hi: list | None) -> str:
    lo, hi = lo_hi or (None, None)
    return f"{f3(v)} [{f3(lo)}, {f3(hi)}]"


def filter_table(rows: list[dict], audited: bool) -> list[str]:
    head = ("| label noise | labels agreeing with truth | CV agreement with the noisy labels "
            "(95% CI) | accuracy vs true cell types, all cells | same, unlabelled cells "
            "| AUROC vs truth | audit error estimate (95% CI) | measured error |")
    out = [head, "|---" * 8 + "|"]
    for r in rows:
        aud = ci(r["audit_error"], r["audit_error_ci"]) if audited else "not run"
        out.append(f"| {r['noise']:.0%} | {r['labels_agree_with_truth']:.3f} "
                   f"| {ci(r['cv_acc_vs_noisy'], r['cv_acc_vs_noisy_ci'])} "
                   f"| {f3(r['acc_true_all'])} | {f3(r['acc_true_unlabelled'])} "
                   f"| {f3(r['auroc_true_all'])} | {aud} | {f3(r['measured_error'])} |")
    return out


def mil_table(rows: list[dict], levels: list[float]) -> list[str]:
    """One block of rows per noise level; the ``none`` run (noise-independent) is repeated."""
    out = ["| label noise | pooling | instance weights | accuracy (fold mean +- sd) "
           "| macro AUROC (fold mean +- sd) | accuracy (pooled out-of-fold, 95% CI) |",
           "|---" * 6 + "|"]
    for noise in levels:
        for r in rows:
            if r["noise"] is not None and r["noise"] != noise:
                continue
            w = "none (one run, repeated)" if r["noise"] is None else r["weights"]
            out.append(f"| {noise:.0%} | {r['pooling']} | {w} "
                       f"| {f3(r['acc_mean'])} +- {f3(r['acc_sd'])} "
                       f"| {f3(r['auroc_mean'])} +- {f3(r['auroc_sd'])} "
                       f"| {ci(r['acc_pooled'], r['acc_pooled_ci'])} |")
    return out


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                 platform.processor())
    git = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model, "load_avg_start": os.getloadavg(),
            "host": platform.node(), "python": platform.python_version(), "git_head": git}


def write_readme(a: argparse.Namespace, res: dict) -> str:
    m, reused = res["machine"], sum(s["skipped"] for s in res["steps"])
    lines = [START,
             f"Command: `{res['command']}`  ",
             f"Date: {res['date']}; machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}, "
             f"load average at start {m['load_avg_start'][0]:.1f}; git {m['git_head']}.  ",
             f"Wall time: {res['wall_s']:.0f} s"
             + (f" ({reused} of {len(res['steps'])} steps reused from an earlier run)"
                if reused else "") + ".  ",
             f"Cohort: {a.slides} slides x {a.cells} cells, 4 classes, seed {a.seed}; MIL "
             f"{a.folds}-fold patient-grouped CV, up to {a.epochs} epochs.", "",
             "Blast filter (linear, GCE), per level of expert-label noise:", "",
             *filter_table(res["filter"], bool(a.audit_n)), "",
             "MIL, 4 classes:", "", *mil_table(res["mil"], a.noise), END]
    block = "\n".join(lines)
    text = a.readme.read_text() if a.readme.exists() else (HERE / "README.md").read_text()
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    a.readme.write_text(text)
    return block


def main(argv: list[str] | None = None) -> int:
    a = resolve(build_parser().parse_args(argv))
    t0, started = time.perf_counter(), datetime.now().astimezone()
    info = machine()
    a.root.mkdir(parents=True, exist_ok=True)
    print(f"work: {a.root}; noise levels {a.noise}; {info['nproc']} CPUs, {info['cpu']}",
          flush=True)
    cohort, store = a.root / "cohort", a.root / "features.h5"
    step("synth", (cohort / "cells.csv").exists(),
         lambda: mil("synth", str(cohort), "--slides", str(a.slides), "--cells", str(a.cells),
                     "--seed", str(a.seed), "--overwrite"))
    step("extract", False,  # resumable: complete slides are skipped
         lambda: mil("extract", str(cohort / "images"), str(store), "--threads", "2", "-q"))
    for noise in a.noise:
        noise_level(a, noise, store)
    runs = fit_all(a)
    res = {"command": " ".join(["python", *[str(x) for x in sys.argv]]),
           "date": started.isoformat(timespec="seconds"), "machine": info,
           "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
           "wall_s": round(time.perf_counter() - t0, 1), "steps": STEPS,
           "filter": [filter_results(a, n) for n in a.noise], "mil": mil_results(a, runs)}
    a.results.write_text(json.dumps(res, indent=1) + "\n")
    print("\n" + write_readme(a, res), flush=True)
    print(f"\nwrote {a.results} and {a.readme}; wall time {res['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
