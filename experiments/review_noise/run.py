"""Noise without an audit, two simulated raters, and which cells an expert should review.

    /work/venv/bin/python experiments/review_noise/run.py            # about 15 min, 2 cores
    /work/venv/bin/python experiments/review_noise/run.py --quick    # smoke test, work/quick

On one synthetic cohort (``mil.synth``, 40 slides x 64 cells, 30% of the cells with an expert
label; features extracted once), per level of flipped expert labels (0-40%, nested flips as
in experiments/paper_protocol):

1. ``mil.blast noise``: the confident-learning label error rate against the true flip rate;
2. ``mil.blast fit`` + ``predict``; a stratified 200-cell audit answered by two simulated
   raters, each wrong on 5% of cells (independently), scored with ``audit --score``: does the
   interval cover the filter's true error over all cells?
3. 200 cells chosen by ``stratified``, ``uncertain`` and ``suspects``, answered by the same
   simulated raters, and ``mil.blast fit --corrections``: the refitted filter's accuracy
   against the true cell types.

Generated data go to ``work/`` (git-ignored); a step whose output exists is skipped. Writes
``results.json`` and the table between the markers of README.md.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
STRATEGIES = ("stratified", "uncertain", "suspects")
REFIT = ["--folds", "2", "--bootstrap", "0"]  # refits: only the final filter is used


def _protocol():
    """experiments/paper_protocol/run.py as a module (its nested label flips are reused)."""
    spec = importlib.util.spec_from_file_location("paper_protocol_run",
                                                  HERE.parent / "paper_protocol" / "run.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


PROTOCOL = _protocol()
read_csv = PROTOCOL.read_csv


def mil(*args: str) -> None:
    """``python -m mil.<stage> ...`` run in this process (the same runner, without an
    interpreter start per command); its log lines go to this script's output."""
    from mil.cli import run_command, stage_command

    print("$ python -m mil." + " ".join(args), flush=True)
    rc = run_command(stage_command(args[0]), list(args[1:]))
    if rc:
        raise SystemExit(f"mil.{args[0]} failed (exit {rc})")


def truth(cohort: Path) -> dict[tuple[str, str], int]:
    return {(r["slide_id"], r["cell_id"]): int(r["is_blast"]) for r in read_csv(cohort / "cells.csv")}


def simulate_raters(audit: Path, true: dict, wrong: float, seed: int) -> None:
    """raters/A.csv and raters/B.csv: the truth, each rater wrong on ``wrong`` of the cells."""
    cells = [(r["slide_id"], r["cell_id"]) for r in read_csv(audit / "review.csv")]
    (audit / "raters").mkdir(exist_ok=True)
    for k, name in enumerate(("A", "B")):
        rng = np.random.default_rng([seed, 7, k])
        flip = rng.uniform(size=len(cells)) < wrong
        with (audit / "raters" / f"{name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["slide_id", "cell_id", "label", "answered_at"])
            for (s, c), f in zip(cells, flip, strict=True):
                w.writerow([s, c, "blast" if true[(s, c)] != f else "non-blast", "simulated"])


def accuracy(store: Path, filter_path: Path, true: dict) -> tuple[float, float]:
    """(accuracy against the true cell types over all cells, error rate = 1 - accuracy)."""
    from mil.blast.model import blast_probability, load_filter, predict_logits
    from mil.store import open_store

    clf, meta = load_filter(filter_path)
    hits, n = 0, 0
    with open_store(store) as st:
        for sid in st.slides():
            p = blast_probability(predict_logits(clf, st.features(sid)), meta["temperature"])
            y = np.array([true[(sid, c)] for c in st.strings(sid, "cell_ids")])
            hits += int(((p >= 0.5) == y).sum())
            n += len(y)
    return hits / n, 1 - hits / n


def level(a: argparse.Namespace, noise: float, store: Path, true: dict) -> dict:
    d = a.root / f"noise_{PROTOCOL.pct(noise)}"
    d.mkdir(parents=True, exist_ok=True)
    cohort = a.root / "cohort"
    fit_opts = ["--folds", str(a.folds), "--seed", str(a.seed), "--bootstrap", str(a.bootstrap)]
    if not (d / "labels.csv").exists():
        PROTOCOL.flip_labels(cohort / "cell_labels_truth.csv", noise, a.seed, d / "labels.csv")
    labels = read_csv(d / "labels.csv")
    flipped = float(np.mean([int(r["label"] == "blast") != true[(r["slide_id"], r["cell_id"])]
                             for r in labels]))
    if not (d / "store.h5").exists():
        PROTOCOL.copy_store(store, d / "store.h5")
    if not (d / "noise_cl.json").exists():
        mil("blast", "noise", str(d / "store.h5"), "--labels", str(d / "labels.csv"),
            "--out", str(d / "noise_cl.json"), *fit_opts)
    cl = json.loads((d / "noise_cl.json").read_text())
    if not (d / "filter.metrics.json").exists():
        mil("blast", "fit", str(d / "store.h5"), "--labels", str(d / "labels.csv"),
            "--out", str(d / "filter.pt"), *fit_opts)
    mil("blast", "predict", str(d / "store.h5"), "--filter", str(d / "filter.pt"), "--overwrite")
    base_acc, base_err = accuracy(d / "store.h5", d / "filter.pt", true)
    row = {"noise": noise, "flipped": flipped, "cl_error_rate": cl["error_rate"],
           "cl_ci": cl["ci"], "cl_abs_diff": abs(cl["error_rate"] - flipped),
           "cl_filter_error_rate": cl["filter_error_rate"], "filter_acc": base_acc,
           "filter_error": base_err}
    for strategy in STRATEGIES:
        audit = d / f"audit_{strategy}"
        if not (audit / "noise.json").exists():
            shutil.rmtree(audit, ignore_errors=True)
            extra = ["--suspects", str(d / "suspects.csv")] if strategy == "suspects" else []
            mil("blast", "audit", str(d / "store.h5"), "--n", str(a.audit_n), "--out", str(audit),
                "--seed", str(a.seed), "--strategy", strategy, "--neighbours", "0", *extra)
            simulate_raters(audit, true, a.rater_error, a.seed + int(noise * 100))
        mil("blast", "audit", "--score", str(audit), "--bootstrap", "1000")
        score = json.loads((audit / "noise.json").read_text())
        fixed = d / f"filter_{strategy}.pt"
        if not fixed.with_suffix(".metrics.json").exists():
            mil("blast", "fit", str(d / "store.h5"), "--labels", str(d / "labels.csv"),
                "--out", str(fixed), "--corrections", str(audit), "--seed", str(a.seed),
                *REFIT)
        acc, _ = accuracy(d / "store.h5", fixed, true)
        row[f"{strategy}_acc"] = acc
        row[f"{strategy}_corrections"] = json.loads(
            fixed.with_suffix(".metrics.json").read_text())["corrections"]
        row[f"{strategy}_kappa"] = score["agreement"]["kappa"]
        if strategy == "stratified":
            lo, hi = score["ci"]
            lat = score["latent_class"]
            row.update({"audit_error_rate": score["error_rate"], "audit_ci": score["ci"],
                        "audit_covers": lo <= base_err <= hi, "audit_kappa_ci": score[
                            "agreement"]["ci95"], "audit_excluded_tie": score["excluded_tie"],
                        "latent_error_rate": lat["error_rate"], "latent_ci": lat["ci"],
                        "latent_covers": lat["ci"][0] <= base_err <= lat["ci"][1],
                        "latent_raters": lat["raters"]})
    print(json.dumps(row), flush=True)
    return row


def f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def table(rows: list[dict]) -> list[str]:
    out = ["| flipped labels | confident learning (95% CI) | abs. diff | filter error: true | "
           "CL estimate | audit, consensus (95% CI) | audit, latent class (95% CI) | "
           "covered: consensus / latent | kappa (95% CI) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["cl_ci"]
        alo, ahi = r["audit_ci"]
        llo, lhi = r["latent_ci"]
        klo, khi = r["audit_kappa_ci"]
        yes = {True: "yes", False: "NO"}
        out.append(f"| {r['flipped']:.3f} | {r['cl_error_rate']:.3f} [{f3(lo)}, {f3(hi)}] | "
                   f"{r['cl_abs_diff']:.3f} | {r['filter_error']:.4f} | "
                   f"{f3(r['cl_filter_error_rate'])} | {r['audit_error_rate']:.3f} "
                   f"[{alo:.3f}, {ahi:.3f}] | {r['latent_error_rate']:.3f} [{llo:.3f}, "
                   f"{lhi:.3f}] | {yes[r['audit_covers']]} / {yes[r['latent_covers']]} | "
                   f"{f3(r['stratified_kappa'])} [{f3(klo)}, {f3(khi)}] |")
    out += ["", "| flipped labels | filter accuracy vs truth | + 200 stratified | + 200 uncertain "
            "| + 200 suspects | suspects: labels changed / confirmed |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        c = r["suspects_corrections"]
        out.append(f"| {r['flipped']:.3f} | {r['filter_acc']:.4f} | {r['stratified_acc']:.4f} | "
                   f"{r['uncertain_acc']:.4f} | {r['suspects_acc']:.4f} | "
                   f"{c['changed']} / {c['confirmed']} |")
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="12 slides x 16 cells, noise 0,0.2")
    p.add_argument("--work", type=Path)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.slides, a.cells = (12, 16) if a.quick else (40, 64)
    a.noise = [0.0, 0.2] if a.quick else [0.0, 0.1, 0.2, 0.3, 0.4]
    a.folds, a.bootstrap, a.audit_n = (3, 20, 30) if a.quick else (5, 200, 200)
    a.rater_error = 0.05
    a.work = (a.work or HERE / "work" / ("quick" if a.quick else "")).resolve()
    a.root = a.work / f"s{a.slides}_c{a.cells}_seed{a.seed}"
    a.root.mkdir(parents=True, exist_ok=True)
    t0, started = time.perf_counter(), datetime.now().astimezone()
    cohort, store = a.root / "cohort", a.root / "features.h5"
    if not (cohort / "cells.csv").exists():
        mil("synth", str(cohort), "--slides", str(a.slides), "--cells", str(a.cells),
            "--seed", str(a.seed), "--overwrite")
    if not store.exists():
        mil("extract", str(cohort / "images"), str(store), "--threads", "2", "-q")
    true = truth(cohort)
    rows = [level(a, noise, store, true) for noise in a.noise]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    head = (f"Command: `python experiments/review_noise/run.py{' --quick' if a.quick else ''}`  \n"
            f"Date: {started.isoformat(timespec='seconds')}; machine: {os.cpu_count()} CPUs, "
            f"{cpu}; wall time {time.perf_counter() - t0:.0f} s.  \nCohort: {a.slides} slides x "
            f"{a.cells} cells, seed {a.seed}; {len(read_csv(cohort / 'cell_labels_truth.csv'))} "
            f"labelled cells; audits of {a.audit_n} cells; raters wrong on "
            f"{a.rater_error:.0%} of cells each.")
    res = {"rows": rows, "header": head}
    results = a.work / "results.json" if a.quick else HERE / "results.json"
    results.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    readme = a.work / "README.md" if a.quick else HERE / "README.md"
    if not readme.exists():
        shutil.copyfile(HERE / "README.md", readme)
    text = readme.read_text()
    block = "\n".join([START, head, "", *table(rows), END])
    readme.write_text(text[: text.index(START)] + block + text[text.index(END) + len(END):])
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
