"""``python -m mil.extract SOURCE OUT``: cell images -> frozen-backbone embeddings in a bag store.

    python -m mil.extract cells/ features/cohort.h5                  # folder per slide
    python -m mil.extract cells.csv features/cohort.zarr --workers 1   # CSV manifest
    python -m mil.extract cells/ features/cohort.h5 --devices 4        # DDP, one store

Batches run across slide boundaries (a flat, ordered dataset of all pending cells); a slide is
committed atomically as soon as its last cell is embedded, so a re-run resumes where a killed
run stopped and produces the same store. Unreadable images are skipped and listed per slide.
The resolved config is written beside the store as ``OUT.config.yaml``.
"""

from __future__ import annotations

import argparse

from mil.cli import Command, run_command
from mil.extract.config import ExtractConfig


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="folder with one sub-folder per slide, or a CSV manifest")
    p.add_argument("out", help="bag store to write: NAME.h5 or NAME.zarr")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> None:
    cfg: ExtractConfig = args.cfg
    if cfg.devices * cfg.num_nodes > 1:
        from mil.extract.ddp import extract_ddp

        summary = extract_ddp(cfg, progress=not args.quiet)
        if summary is None:  # not rank 0
            return
    else:
        from mil.extract.pipeline import extract

        summary = extract(cfg, progress=not args.quiet)
    print(summary.line(cfg.out))


COMMAND = Command(name="extract", help="cell images -> frozen-backbone embeddings in a bag store",
                  description=__doc__, config=ExtractConfig, arguments=_arguments, run=_run)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
