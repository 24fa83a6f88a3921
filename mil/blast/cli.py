"""``python -m mil.blast``: fit, apply and audit the blast filter (the instance classifier).

    python -m mil.blast fit STORE --labels cell_labels.csv --out filter.pt [--loss gce]
    python -m mil.blast predict STORE --filter filter.pt [--overwrite] [--labels cells.csv]
    python -m mil.blast fit STORE --labels cell_labels.csv --out filter.pt --corrections audit/
    python -m mil.blast noise STORE --labels cell_labels.csv --out noise_cl.json
    python -m mil.blast audit STORE --n 200 --out audit/ [--strategy stratified] [--source ROOT]
    python -m mil.blast audit --score audit/ [--out noise.json]

``fit`` trains on the stored embeddings of expert-labelled cells (``slide_id,cell_id,label``,
label blast/non-blast or 1/0). Cross-validation is grouped by slide; out-of-fold predictions
give accuracy, balanced accuracy, AUROC and ECE with 95% slide-level bootstrap intervals and the
temperature; the final filter is trained on all labelled cells. The default loss is generalized
cross-entropy (GCE, q=0.7), because expert cell labels are noisy and GCE bounds the pull of a
wrong label (see experiments/blast_filter_synthetic for the ce/gce comparison). Probabilities
are calibrated against the given (noisy) labels with a single temperature, which does not move
the 0.5 decision boundary.

``predict`` writes ``blast_prob`` (float32) beside the features of every slide; given expert
labels of some of its cells (``--labels``), it reports the filter's calibration on them
(accuracy, balanced accuracy, AUROC, ECE, Brier), a check of the filter on a new cohort.
``audit`` draws a sample for expert review (stratified by predicted class by default; ``uncertain``: nearest
p = 0.5; ``suspects``: confident learning's list) into a blinded folder, reviewed in the browser
with ``python -m mil.review``; ``audit --score`` turns the raters' answers into the filter's
error rates and the raters' agreement; the key ``error_rate`` of its JSON is the estimated noise
rate of the blast weights (``mil.fit --noise-rate noise.json``). ``noise`` estimates how often
the expert labels themselves are wrong, with no audit, by confident learning on out-of-fold
probabilities (:mod:`mil.blast.noise`). ``fit --corrections AUDIT`` trains on the labels with
the reviewed cells' consensus in place of their given labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mil.blast.config import FilterConfig, NoiseConfig
from mil.cli import Command, run_command
from mil.config import save_config
from mil.errors import CliError
from mil.outputs import require_writable


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="bag store (.h5 / .zarr)")


def _fit(args: argparse.Namespace) -> None:
    from mil.blast.train import fit, metrics_text

    cfg: FilterConfig = args.cfg
    require_writable(cfg.out, "filter")  # type: ignore[arg-type]  # before cross-validation
    metrics = fit(cfg)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))  # type: ignore[arg-type]
    print(metrics_text(metrics))


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--filter", required=True, help="filter file written by fit")
    p.add_argument("--overwrite", action="store_true",
                   help="replace blast_prob written by another filter")
    p.add_argument("--labels", help="CSV slide_id,cell_id,label of cells of this store: "
                                    "report the filter's calibration on them")
    p.add_argument("--report", help="with --labels: also write the report as JSON here")


def _predict(args: argparse.Namespace) -> None:
    from mil.blast.annotate import predict

    predict(args.store, args.filter, overwrite=args.overwrite)
    if args.labels:
        from mil.blast.cohort import calibration_report, report_text

        print(report_text(calibration_report(args.store, args.labels, args.filter, args.report)))


def _noise(args: argparse.Namespace) -> None:
    from mil.blast.noise import run, summary_text

    cfg: NoiseConfig = args.cfg
    result = run(cfg)
    save_config(cfg, Path(cfg.out).with_suffix(".config.yaml"))  # type: ignore[arg-type]
    print(summary_text(result))


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", nargs="?", help="bag store with blast_prob")
    p.add_argument("--n", type=int, default=200, help="cells to sample (default: 200)")
    p.add_argument("--out", help="output folder (sampling) or JSON file (--score; default: "
                                 "noise.json in the audit folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="stratified",
                   choices=["stratified", "uncertain", "suspects"],
                   help="stratified (default; the only one that estimates the store's error "
                        "rate), uncertain (nearest p = 0.5), suspects (the --suspects list)")
    p.add_argument("--suspects", metavar="SUSPECTS_CSV",
                   help="confident learning's list for --strategy suspects (mil.blast noise)")
    p.add_argument("--neighbours", type=int, default=6,
                   help="cells of the same slide shown beside each reviewed cell (default: 6)")
    p.add_argument("--source", help="root the store's cell paths are relative to "
                                    "(default: the root recorded by extract)")
    p.add_argument("--score", metavar="AUDIT_DIR",
                   help="score an audit: its folder (raters/*.csv, review.csv) or an old "
                        "filled review.csv")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap replicates of the kappa interval (--score; default: 1000)")


def _audit(args: argparse.Namespace) -> None:
    if args.score:
        from mil.blast.score import score

        if args.store:
            raise CliError("audit --score takes the audit folder or its review sheet, "
                           "not a store")
        result = score(Path(args.score), args.out, n_boot=args.bootstrap)
        keys = ("error_rate", "ci", "n") if "error_rate" in result else \
            ("sample_error_rate", "strategy", "n")
        print(json.dumps({**{k: result[k] for k in keys},
                          "kappa": result["agreement"]["kappa"]}))
        return
    from mil.blast.audit import audit

    if not args.store or not args.out:
        raise CliError("audit needs STORE and --out DIR (or --score AUDIT_DIR)")
    require_writable(args.out, "audit folder")
    audit(args.store, n=args.n, out=Path(args.out), seed=args.seed, source=args.source,
          strategy=args.strategy, suspects=args.suspects, neighbours=args.neighbours)


COMMAND = Command(
    name="blast", help="fit, apply and audit the blast filter (the instance classifier)",
    description=__doc__ or "",
    subcommands=(
        Command("fit", "train the filter on expert-labelled cells", run=_fit,
                config=FilterConfig, arguments=_fit_args),
        Command("predict", "write blast_prob for every cell of the store", run=_predict,
                arguments=_predict_args),
        Command("noise", "estimate the expert-label noise by confident learning (no audit)",
                run=_noise, config=NoiseConfig, arguments=_fit_args),
        Command("audit", "sample cells for expert review, or score the raters' answers",
                run=_audit, arguments=_audit_args),
    ),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
