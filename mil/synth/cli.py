"""``python -m mil.synth OUT``: write a synthetic AML cohort of single-cell MGG images."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mil.cli import Command, run_command
from mil.synth.config import SynthConfig


@dataclass
class SynthCommandConfig(SynthConfig):
    """:class:`SynthConfig` and the task: ``multilabel`` writes a mutation panel instead."""

    task: Literal["multiclass", "multilabel"] = field(default="multiclass", metadata={
        "help": "multiclass: one genetic class per slide; multilabel: a mutation panel "
                "(NPM1 30%%, FLT3-ITD 20%% mostly with NPM1, CEBPA 10%% of patients; "
                "slides.csv holds a 1/0 column per target; --classes unused)"})


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="output folder")


def _run(args: argparse.Namespace) -> None:
    cfg: SynthCommandConfig = args.cfg
    if cfg.task == "multilabel":
        from mil.synth.panel import make_panel

        make_panel(args.out, cfg)
        return
    from mil.synth.cohort import make_cohort

    make_cohort(args.out, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                             if f.name != "task"})


COMMAND = Command(
    name="synth", help="write a synthetic AML cohort (folder per slide + CSVs)",
    description="Write a synthetic AML cohort of single-cell MGG images (folder per slide + CSVs).",
    config=SynthCommandConfig, arguments=_arguments, run=_run)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
