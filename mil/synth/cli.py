"""``python -m mil.synth OUT``: write a synthetic AML cohort of single-cell MGG images."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mil.cli import Command, run_command
from mil.synth.config import SynthConfig


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output folder")


def _run(args: argparse.Namespace) -> None:
    from mil.synth.cohort import make_cohort

    cfg: SynthConfig = args.cfg
    make_cohort(args.out, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


COMMAND = Command(
    name="synth", help="write a synthetic AML cohort (folder per slide + CSVs)",
    description="Write a synthetic AML cohort of single-cell MGG images (folder per slide + CSVs).",
    config=SynthConfig, arguments=_arguments, run=_run)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
