"""``python -m mil.heatmap``: per-slide attention tables, galleries, mosaics, maps, an index.

    python -m mil.heatmap RUN_DIR --store STORE --out DIR [--source ROOT] [--slides A,B]
        [--top-k 16] [--norm rank|minmax|raw] [--occlusion] [--labels slides.csv]

Each slide gets ``DIR/<file_name(slide_id)>/`` (safe for any id: ``../../x`` stays inside DIR).
The map explains the predicted class: its own branch for multi-branch models, the shared
attention for single-branch ones; which one, and the normalisation, are written on every image.
Default ``--norm rank`` colours by within-slide percentile, so maps always use the full scale.
Missing cell images become marked placeholders and are counted, never a crash.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mil.cli import Command, run_command, split_ids
from mil.errors import CliError
from mil.outputs import require_writable

NORM_CHOICES = ("rank", "minmax", "raw")  # mil.explain.attention.NORMS


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a mil.fit run folder")
    p.add_argument("--store", type=Path, help="bag store of the slides (default: the run's)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (one sub-folder per slide)")
    p.add_argument("--source", help="root of the cell images, if they moved since extraction "
                                    "(default: the source recorded in the store)")
    p.add_argument("--slides", help="comma-separated slide ids (default: all in the store)")
    p.add_argument("--top-k", type=int, default=16, help="cells in each gallery row (default: 16)")
    p.add_argument("--norm", choices=NORM_CHOICES, default="rank",
                   help="colour scale: rank = within-slide percentile (default), minmax, raw")
    p.add_argument("--occlusion", action="store_true",
                   help="also leave each cell out and record the predicted class's probability drop")
    p.add_argument("--labels", type=Path, help="slide_id,label CSV of true labels "
                                               "(default: the run's predictions.csv)")
    p.add_argument("--batch-size", type=int, default=8, help="bags per forward pass")


def _run(args: argparse.Namespace) -> None:
    from mil.explain.run import HeatmapOptions, export_run

    if args.top_k < 1:
        raise CliError("--top-k must be at least 1")
    require_writable(args.out, "report folder")
    opts = HeatmapOptions(args.source, split_ids(args.slides), args.top_k, args.norm,
                          args.occlusion, args.labels, args.batch_size)
    rows = export_run(args.run_dir, args.store, args.out, opts)
    for models in dict.fromkeys(r.models for r in rows):
        print(f"{models}: {len({r.slide_id for r in rows if r.models == models})} slide(s)")
    missing = sum(r.n_missing for r in rows)
    views = f" ({len(rows)} target views)" if len(rows) > len({r.slide_id for r in rows}) else ""
    print(f"exported {len({r.slide_id for r in rows})} slide(s){views} -> {args.out / 'index.html'}"
          + (f" ({missing} cell images missing, drawn as placeholders)" if missing else ""))


COMMAND = Command(name="heatmap", help="attention tables, galleries, maps and an HTML index of a run",
                  description=__doc__ or "", arguments=_arguments, run=_run)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
