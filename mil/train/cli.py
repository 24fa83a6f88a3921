"""``python -m mil.fit`` and ``python -m mil.predict``: the two commands of the training stage.

    python -m mil.fit features/cohort.h5 --labels slides.csv --out runs/r1 \\
        --instance-weights prior --noise-rate audit.json --loss gce --folds 5
    python -m mil.predict runs/r1 --store features/new.h5 --out preds.csv --attention attn/
    python -m mil.predict runs/r1 --store features/new.h5 --out preds.csv --adapt-prevalence \\
        --test-labels new_slides.csv
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
    if args.cfg.task == "multilabel":
        from mil.train.panel_fit import fit_panel

        fit_panel(args.cfg)
        return
    from mil.train.crossval import fit

    fit(args.cfg)


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a mil.fit run folder")
    p.add_argument("--store", type=Path, help="bag store of the slides (default: the run's)")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    p.add_argument("--attention", type=Path, metavar="DIR", help="also write per-cell attention")
    p.add_argument("--slides", help="comma-separated slide ids (default: all in the store)")
    p.add_argument("--models", choices=["auto", "final", "folds"], default="auto",
                   help="final ensemble, fold ensemble, or auto: final when the run has it")
    p.add_argument("--adapt-prevalence", action="store_true",
                   help="estimate the class prevalence of these slides by EM and call under it")
    p.add_argument("--test-labels", type=Path, metavar="CSV",
                   help="slide_id,label of (some of) these slides: print and save metrics "
                        "beside the baselines' (OUT with suffix .metrics.json)")
    p.add_argument("--batch-size", type=int, default=8, help="bags per forward pass")
    p.add_argument("--conformal", type=float, metavar="ALPHA",
                   help="also write split-conformal prediction sets with 1 - ALPHA coverage, "
                        "calibrated on the run's out-of-fold slides (valid for slides of the "
                        "same cohort), and a review flag where a set holds more than one answer")


def _predict(args: argparse.Namespace) -> None:
    from mil.store import file_names
    from mil.train.conformal import ConformalScores
    from mil.train.predict import (
        conformal_columns,
        labelled_report,
        predict_cohort,
        write_attention,
        write_predictions,
    )
    from mil.train.rundir import RunDir

    require_writable(args.out, "predictions CSV")  # before the models run, not after
    if args.conformal is not None:  # the run's scores and ALPHA, before the models run
        ConformalScores.load(args.run_dir).thresholds(args.conformal)
    if args.attention:
        require_writable(args.attention, "attention folder")
    pred = predict_cohort(args.run_dir, args.store, split_ids(args.slides), args.batch_size,
                          args.models, args.adapt_prevalence)
    extra: dict[str, list[str]] = {}
    if args.conformal is not None:
        extra, note = conformal_columns(args.run_dir, pred.slides, args.conformal)
        pred.notes.append(note)
    write_predictions(args.out, pred.slides, extra)
    if args.attention:
        names = file_names([r.slide_id for r in pred.slides])
        for r in pred.slides:
            write_attention(r, args.attention, names[r.slide_id])
    print("\n".join(pred.notes))
    print(f"predicted {len(pred.slides)} slide(s) -> {args.out}")
    if args.test_labels:
        store = args.store or RunDir(args.run_dir).store
        print(labelled_report(args.run_dir, pred, store, args.test_labels,
                              args.out.with_suffix(".metrics.json")))


FIT = Command(name="fit", help="cross-validated MIL training on a bag store",
              description="Patient-grouped k-fold training of the MIL classifier on a bag store.",
              config=FitConfig, arguments=_fit_args, run=_fit)
PREDICT = Command(name="predict", help="predict slides with the models of a mil.fit run",
                  arguments=_predict_args, run=_predict)


def fit_main(argv: list[str] | None = None) -> int:
    return run_command(FIT, argv)


def predict_main(argv: list[str] | None = None) -> int:
    return run_command(PREDICT, argv)
