"""``python -m mil.demo [--out DIR] [--quick]``: the whole method on a synthetic AML cohort.

synth -> extract (tf_efficientnet_lite0, offline ImageNet weights) -> blast filter on the noisy
expert labels -> predict blast_prob -> audit scored against the synth's truth -> gated-attention
MIL with 5-fold patient-grouped CV, blast prior tempered by the audited noise rate -> heatmaps.
Each stage is the same ``python -m mil.<stage>`` a user runs, called in-process; every stage
resumes, so re-running after an interruption continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mil.cli import Command, run_command, stage_command
from mil.config import save_config
from mil.errors import CliError


@dataclass
class DemoConfig:
    """Options of ``python -m mil.demo``; ``quick`` picks a smaller cohort and fewer epochs."""

    out: Path = field(default=Path("runs/demo"), metadata={"help": "output folder"})
    quick: bool = field(default=False, metadata={"help": "small cohort, under two minutes on 2 cores"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    slides: int | None = field(default=None, metadata={"help": "slides (default 40; quick 40)"})
    cells: int | None = field(default=None, metadata={"help": "cells per slide (64; quick 24)"})
    epochs: int | None = field(default=None, metadata={"help": "MIL epochs (100; quick 60)"})
    audit_n: int = field(default=200, metadata={"help": "cells drawn for the expert audit"})
    progress: bool = field(default=True, metadata={"help": "progress bars (off for CI logs)"})

    def sizes(self) -> tuple[int, int, int]:
        """(slides, cells, epochs) after applying the quick defaults."""
        base = (40, 24, 60) if self.quick else (40, 64, 100)
        return (self.slides or base[0], self.cells or base[1], self.epochs or base[2])


def _stage(n: int, title: str, t0: float) -> None:
    print(f"\n[{n}/8] {title}   (t = {time.perf_counter() - t0:.0f} s)", flush=True)


def _call(module: str, argv: list[str]) -> None:
    """Run ``python -m mil.<module> argv`` in-process; a failure stops the demo."""
    print("$ python -m mil." + module + " " + " ".join(argv), flush=True)
    code = run_command(stage_command(module), argv)
    if code != 0:
        raise CliError(f"stage mil.{module} failed with exit code {code}")


def fill_review_from_truth(sheet: Path, cells_csv: Path) -> int:
    """Play the expert: fill review.csv's ``expert`` column from the synth's true cell types."""
    with cells_csv.open(newline="") as fh:
        truth = {(r["slide_id"], r["cell_id"]): r["is_blast"] == "1" for r in csv.DictReader(fh)}
    with sheet.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), list(reader)
    for r in rows:
        r["expert"] = "blast" if truth[(r["slide_id"], r["cell_id"])] else "non-blast"
    with sheet.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def _run(cfg: DemoConfig) -> dict[str, Any]:
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "demo.config.yaml")
    slides, cells, epochs = cfg.sizes()
    cohort, store, filt = out / "cohort", out / "features.h5", out / "blast_filter.pt"
    run, report, audit = out / "run", out / "report", out / "audit"
    t0 = time.perf_counter()
    _stage(1, f"synthesize {slides} slides x {cells} cells", t0)
    if not (cohort / "cell_labels.csv").exists():
        _call("synth", [str(cohort), "--slides", str(slides), "--cells", str(cells),
                        "--seed", str(cfg.seed), "--montage", str(out / "montage.png"),
                        "--overwrite"])
    _stage(2, "extract features (tf_efficientnet_lite0, offline ImageNet weights)", t0)
    _call("extract", [str(cohort / "images"), str(store), *([] if cfg.progress else ["-q"])])
    _stage(3, "fit the blast filter on the noisy expert labels", t0)
    if not filt.exists():
        _call("blast", ["fit", str(store), "--labels", str(cohort / "cell_labels.csv"),
                        "--out", str(filt), "--seed", str(cfg.seed)])
    _stage(4, "predict blast_prob for every cell", t0)
    _call("blast", ["predict", str(store), "--filter", str(filt)])
    _stage(5, f"audit {cfg.audit_n} cells (the synth's truth plays the expert)", t0)
    if not (audit / "noise.json").exists():
        _call("blast", ["audit", str(store), "--n", str(cfg.audit_n), "--out", str(audit),
                        "--seed", str(cfg.seed)])
        fill_review_from_truth(audit / "review.csv", cohort / "cells.csv")
        _call("blast", ["audit", "--score", str(audit / "review.csv"),
                        "--out", str(audit / "noise.json")])
    _stage(6, "gated-attention MIL, 5-fold patient-grouped CV, tempered blast prior", t0)
    _call("fit", [str(store), "--labels", str(cohort / "slides.csv"), "--out", str(run),
                  "--instance-weights", "prior", "--noise-rate", str(audit / "noise.json"),
                  "--epochs", str(epochs), "--folds", "5", "--seed", str(cfg.seed),
                  # --quick: one final model on every slide (the default trains five)
                  *(["--final-seeds", "1"] if cfg.quick else []),
                  "--progress" if cfg.progress else "--no-progress"])
    _stage(7, "attention heatmaps, galleries and the HTML report", t0)
    _call("heatmap", [str(run), "--out", str(report), "--top-k", "8"])
    _stage(8, "summary", t0)
    return summarise(out, filt, audit / "noise.json", run, report, time.perf_counter() - t0)


def _truth_accuracy(store: Path, cells_csv: Path) -> float:
    """Blast filter accuracy against the synth's true cell types, over every cell."""
    import numpy as np  # deferred: the demo's --help stays instant

    from mil.store import open_store

    with cells_csv.open(newline="") as fh:
        truth = {(r["slide_id"], r["cell_id"]): r["is_blast"] == "1" for r in csv.DictReader(fh)}
    st = open_store(store)
    hits = []
    for sid in st.slides():
        prob = st.annotation(sid, "blast_prob")
        true = np.array([truth[(sid, c)] for c in st.strings(sid, "cell_ids")])
        hits.append((prob >= 0.5) == true)
    st.close()
    return float(np.concatenate(hits).mean())


def summarise(out: Path, filt: Path, noise: Path, run: Path, report: Path,
              seconds: float) -> dict[str, Any]:
    """Collect the headline figures and print them."""
    cohort = out / "cohort"
    fm = json.loads(filt.with_suffix(".metrics.json").read_text())
    nz = json.loads(noise.read_text())
    mm = json.loads((run / "metrics.json").read_text())["pooled"]
    s = {
        "filter_accuracy_vs_truth": _truth_accuracy(out / "features.h5", cohort / "cells.csv"),
        "filter_cv_accuracy_vs_noisy_labels": fm["accuracy"]["value"],
        "estimated_noise_rate": nz["error_rate"],
        "estimated_noise_ci": nz["ci"],
        "mil_accuracy": mm["accuracy"],
        "mil_accuracy_ci": mm["ci95"]["accuracy"],
        "mil_macro_auroc": mm["macro_auroc"],
        "report": str((report / "index.html").resolve()),
        "seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    lo, hi = s["estimated_noise_ci"]
    alo, ahi = s["mil_accuracy_ci"]
    print(
        "\ncellmil demo summary\n"
        f"  blast filter accuracy    {s['filter_accuracy_vs_truth']:.3f} vs true cell types "
        f"({s['filter_cv_accuracy_vs_noisy_labels']:.3f} CV agreement with the noisy labels)\n"
        f"  estimated noise rate     {s['estimated_noise_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
        "from the audit)\n"
        f"  MIL slide accuracy       {s['mil_accuracy']:.3f} (95% CI {alo:.3f}-{ahi:.3f}, "
        "5-fold out-of-fold)\n"
        f"  MIL macro AUROC          {s['mil_macro_auroc']:.3f}\n"
        f"  report                   {s['report']}\n"
        f"  total time               {seconds:.0f} s",
        flush=True,
    )
    return s


def _demo(args: argparse.Namespace) -> None:
    _run(args.cfg)


COMMAND = Command(name="demo", help="the whole method on a synthetic cohort, in minutes",
                  description=(__doc__ or "").splitlines()[0], config=DemoConfig, run=_demo)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
