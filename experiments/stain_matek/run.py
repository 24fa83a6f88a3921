"""``mil.extract --stain-norm`` on real cells under a simulated stain-batch shift.

    nice -n 5 /work/venv/bin/python experiments/stain_matek/run.py [--work /work/xm]

Data: /work/shared/data/matek_lmu (Matek et al. 2019, CC BY 3.0; see its ATTRIBUTION.md).
The 1,150 cells have no slide grouping, so they are dealt at random (seed 0) into 20 pseudo-slides
S00-S19 (copies of one original cell share a slide, so train and test never share a cell).
Slides S00-S09 train the blast filter; S10-S19 are the test slides, once as they are (control)
and once stain-shifted: each channel's optical density OD = -log(I/255) times a slide gain
exp(N(0, 0.1)) (drawn per slide and channel, seed 1) times a batch gain (1.25, 0.95, 0.8) for
(R, G, B). Every image is written as PNG (the originals re-saved, so the codec is the same).

Per stain norm (none, od-slide, reinhard-slide, reinhard): three stores (train, test, test
shifted) by ``python -m mil.extract``; ``python -m mil.blast fit`` on the train store;
``python -m mil.blast predict --labels --report`` on each test store. Steps whose output exists
are skipped. Results: WORK/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/matek_lmu")
NORMS = ("none", "od-slide", "reinhard-slide", "reinhard")
N_SLIDES, TRAIN_SLIDES = 20, 10
BATCH_GAIN = np.array([1.25, 0.95, 0.8], np.float32)  # (R, G, B) OD gain of the new stain batch
SLIDE_SIGMA = 0.1
TESTS = ("test", "test_shift")
KEYS = ("accuracy", "balanced_accuracy", "auroc")


def mil(*args: str, log: Path | None = None) -> None:
    """``nice -n 5 python -m mil.<args>``; stdout also to ``log``."""
    cmd = ["nice", "-n", "5", sys.executable, "-m", "mil." + args[0], *args[1:]]
    print("$ " + " ".join(cmd[3:]), flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    if log is not None:
        log.write_text(out, encoding="utf-8")


def original_id(path: str) -> str:
    """The original cell of a file: 'MYO_0203' for fifteen_class/MYO___MYO_0203_0_96_101.tiff."""
    stem = Path(path).stem
    m = re.match(r"^[A-Z]+___([A-Z]+_\d+)_", stem)
    return m.group(1) if m else stem


def assign_slides(rows: list[dict], seed: int = 0) -> None:
    """``slide`` (0..19) for every row: original cells shuffled (seeded) and dealt round robin."""
    groups = sorted({original_id(r["path"]) for r in rows})
    rng = np.random.default_rng(seed)
    slide_of = {groups[j]: i % N_SLIDES for i, j in enumerate(rng.permutation(len(groups)))}
    for r in rows:
        r["slide"] = slide_of[original_id(r["path"])]
        r["slide_id"] = f"S{r['slide']:02d}"
        r["cell_id"] = Path(r["path"]).with_suffix("").as_posix().replace("/", "__")


def od_shift(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) with each channel's optical density multiplied by ``gain`` (3,)."""
    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)  # (H, W, 3)
    return np.clip(255.0 * np.exp(-od * gain) + 0.5, 0, 255).astype(np.uint8)


def slide_gains(seed: int = 1) -> dict[int, np.ndarray]:
    """The shift's OD gain (3,) of each test slide: slide gain x batch gain."""
    rng = np.random.default_rng(seed)
    return {s: np.exp(rng.normal(0.0, SLIDE_SIGMA, 3)).astype(np.float32) * BATCH_GAIN
            for s in range(TRAIN_SLIDES, N_SLIDES)}


def write_images(rows: list[dict], work: Path) -> None:
    """work/img/orig/<slide>/<cell>.png for all cells, work/img/shift/... for the test slides."""
    from PIL import Image

    from mil.extract.images import decode

    gains = slide_gains()
    for r in rows:
        r["orig"] = work / "img" / "orig" / r["slide_id"] / f"{r['cell_id']}.png"
        r["shift"] = work / "img" / "shift" / r["slide_id"] / f"{r['cell_id']}.png"
        todo = [r["orig"]] + ([r["shift"]] if r["slide"] >= TRAIN_SLIDES else [])
        if all(p.exists() for p in todo):
            continue
        rgb = decode(DATA / r["path"]).numpy()  # (H, W, 3) uint8 (RGBA TIFFs lose alpha)
        for p, im in zip(todo, (rgb, od_shift(rgb, gains.get(r["slide"], BATCH_GAIN))), strict=False):
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp.png")
            Image.fromarray(im).save(tmp)
            tmp.replace(p)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_tables(rows: list[dict], work: Path) -> dict[str, Path]:
    """Manifests (train, test, test_shift) and label CSVs (train, test) in ``work``."""
    train = [r for r in rows if r["slide"] < TRAIN_SLIDES]
    test = [r for r in rows if r["slide"] >= TRAIN_SLIDES]
    head = ["slide_id", "cell_id", "path", "code", "label"]
    out = {}
    for name, cells, key in (("train", train, "orig"), ("test", test, "orig"),
                             ("test_shift", test, "shift")):
        out[name] = write_csv(work / f"{name}.csv", head, [
            [r["slide_id"], r["cell_id"], str(r[key]), r["code"], r["label"]] for r in cells])
    for name, cells in (("train", train), ("test", test)):
        out[f"{name}_labels"] = write_csv(work / f"{name}_labels.csv", ["slide_id", "cell_id", "label"],
                                          [[r["slide_id"], r["cell_id"], r["label"]] for r in cells])
    return out


def run_norm(norm: str, tables: dict[str, Path], work: Path) -> dict:
    """Extract the three stores, fit on train, predict both test stores; the figures."""
    d = work / norm
    d.mkdir(parents=True, exist_ok=True)
    for name in ("train", *TESTS):
        if not (d / f"{name}.done").exists():
            mil("extract", str(tables[name]), str(d / f"{name}.h5"), "--stain-norm", norm, "-q")
            (d / f"{name}.done").touch()
    f = d / "filter.pt"
    if not f.exists():
        mil("blast", "fit", str(d / "train.h5"), "--labels", str(tables["train_labels"]),
            "--out", str(f), log=d / "fit.txt")
    res: dict = {}
    for name in TESTS:
        rep = d / f"{name}_report.json"
        if not rep.exists():
            mil("blast", "predict", str(d / f"{name}.h5"), "--filter", str(f), "--labels",
                str(tables["test_labels"]), "--report", str(rep), "--overwrite")
        r = json.loads(rep.read_text())
        res[name] = {k: [r[k]["value"], *r[k]["ci"]] for k in KEYS}
        res[name]["n_cells"], res[name]["n_blast"] = r["n_cells"], r["n_blast"]
    from mil.blast.model import load_filter

    cv = load_filter(f)[1]["metrics"]
    res["train_cv"] = {k: [cv[k]["value"], *cv[k]["ci"]] for k in KEYS}
    return res


def table(results: dict) -> str:
    def cell(v: list) -> str:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    lines = ["| stain norm | CV acc (S00-S09) | test acc | test bal acc | test AUROC "
             "| shifted acc | shifted bal acc | shifted AUROC |", "|---" * 8 + "|"]
    for norm, r in results.items():
        lines.append(f"| {norm} | {cell(r['train_cv']['accuracy'])} | "
                     + " | ".join(cell(r[t][k]) for t in TESTS for k in KEYS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/work/xm", help="work folder (outside the repo)")
    ap.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with (DATA / "cells.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assign_slides(rows)
    keys = {(r["slide_id"], r["cell_id"]) for r in rows}
    assert len(keys) == len(rows), "cell ids not unique within slides"
    write_images(rows, work)
    tables = write_tables(rows, work)
    counts = {s: [sum(r["slide"] == s for r in rows), sum(r["slide"] == s and r["label"] == "blast"
                                                             for r in rows)] for s in range(N_SLIDES)}
    results = {norm: run_norm(norm, tables, work) for norm in args.norms}
    out = {"slides_cells_blasts": counts,
           "shift_gains": {f"S{s:02d}": g.round(4).tolist() for s, g in slide_gains().items()},
           "results": results}
    (work / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
