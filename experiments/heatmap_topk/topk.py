"""Do the top-attention cells of each slide show the planted class cue?

    python experiments/heatmap_topk/topk.py HEATMAP_DIR COHORT_DIR [--k 16] [--out results.json]

For every exported slide: the share of its top-k attention cells (rank <= k in attention.csv,
the map's explained branch) that are blasts showing the slide's class cue (cells.csv
``is_blast`` and ``shows_cue``), against that share in the whole bag; the same for any blast.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from statistics import mean, median


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def slide_table(heatmaps: Path, cohort: Path, k: int) -> list[dict[str, object]]:
    """One dict per slide: truth, prediction, top-k and bag shares of cue blasts and blasts."""
    cells = {(r["slide_id"], r["cell_id"]): r for r in _rows(cohort / "cells.csv")}
    out = []
    for s in _rows(heatmaps / "summary.csv"):
        table = _rows(heatmaps / s["folder"] / "attention.csv")
        info = [cells[(s["slide_id"], r["cell_id"])] for r in table]
        cue = [c["is_blast"] == "1" and c["shows_cue"] == "1" for c in info]
        blast = [c["is_blast"] == "1" for c in info]
        top = [i for i, r in enumerate(table) if int(r["rank"]) <= k]
        bottom = [i for i, r in enumerate(table) if int(r["rank"]) > len(table) - k]
        out.append({
            "slide_id": s["slide_id"], "truth": s["truth"], "prediction": s["prediction"],
            "n_cells": len(table), "k": len(top),
            "top_cue": mean(cue[i] for i in top), "bag_cue": mean(cue),
            "bottom_cue": mean(cue[i] for i in bottom),
            "top_blast": mean(blast[i] for i in top), "bag_blast": mean(blast),
        })
    return out


def summarise(rows: list[dict[str, object]]) -> dict[str, object]:
    """Means over slides (all, correctly and wrongly predicted) of each share."""
    def agg(sel: list[dict[str, object]]) -> dict[str, float | int]:
        if not sel:
            return {"slides": 0}
        keys = ("top_cue", "bag_cue", "bottom_cue", "top_blast", "bag_blast")
        res: dict[str, float | int] = {"slides": len(sel)}
        res.update({key: round(mean(float(r[key]) for r in sel), 4) for key in keys})  # type: ignore[arg-type]
        res["median_top_cue"] = round(median(float(r["top_cue"]) for r in sel), 4)  # type: ignore[arg-type]
        res["slides_top_cue_above_bag"] = sum(float(r["top_cue"]) > float(r["bag_cue"]) for r in sel)  # type: ignore[arg-type]
        return res

    right = [r for r in rows if r["truth"] == r["prediction"]]
    wrong = [r for r in rows if r["truth"] and r["truth"] != r["prediction"]]
    return {"all": agg(rows), "correct": agg(right), "wrong": agg(wrong)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("heatmaps", type=Path)
    p.add_argument("cohort", type=Path)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rows = slide_table(args.heatmaps, args.cohort, args.k)
    res = {"k": args.k, **summarise(rows), "per_slide": rows}
    text = json.dumps(res, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps({key: v for key, v in res.items() if key != "per_slide"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
