"""``python -m mil.fit`` and ``python -m mil.predict``: the two commands of the training stage.

    python -m mil.fit features/cohort.h5 --labels slides.csv --out runs/r1 \\
        --instance-weights prior --noise-rate audit.json --loss gce --folds 5
    python -m mil.predict runs/r1 --store features/new.h5 --out preds.csv --attention attn/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mil.cli import Command, run_command, split_ids
from mil.outputs import require_writable
from mil.train.config import FitConfig


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path, help="bag store (.h5 / .zarr)")


def _fit(args: argparse.Namespace) -> None:
    from mil.train.crossval import fit

    fit(args.cfg)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a mil.fit run folder")
    p.add_argument("--store", type=Path, help="bag store of the slides (default: the run's)")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    p.add_argument("--attention", type=Path, metavar="DIR", help="also write per-cell attention")
    p.add_argument("--slides", help="comma-separated slide ids (default: all in the store)")
    p.add_argument("--batch-size", type=int, default=8, help="bags per forward pass")


def _predict(args: argparse.Namespace) -> None:
    from mil.store import file_names
    from mil.train.predict import predict_slides, write_attention, write_predictions

    require_writable(args.out, "predictions CSV")  # before the models run, not after
    if args.attention:
        require_writable(args.attention, "attention folder")
    preds = predict_slides(args.run_dir, args.store, split_ids(args.slides), args.batch_size)
    write_predictions(args.out, preds)
    if args.attention:
        names = file_names([r.slide_id for r in preds])
        for r in preds:
            write_attention(r, args.attention, names[r.slide_id])
    print(f"predicted {len(preds)} slide(s) -> {args.out}")


FIT = Command(name="fit", help="cross-validated MIL training on a bag store",
              description="Patient-grouped k-fold training of the MIL classifier on a bag store.",
              config=FitConfig, arguments=_fit_args, run=_fit)
PREDICT = Command(name="predict", help="predict slides with the fold ensemble of a mil.fit run",
                  arguments=_predict_args, run=_predict)


def fit_main(argv: list[str] | None = None) -> int:
    return run_command(FIT, argv)


def predict_main(argv: list[str] | None = None) -> int:
    return run_command(PREDICT, argv)
