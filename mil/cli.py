"""The one command runner behind ``cellmil <stage>`` and every ``python -m mil.<stage>``.

Each stage declares its command once, in its own ``cli.py``, as a :class:`Command`: a name, a
help line, a typed config dataclass (its fields become ``--flags``), extra arguments and a
``run`` function. The runner adds ``--config FILE.yaml`` and ``-v`` to every command, sets up
logging, resolves the config (defaults <- YAML <- flags) and turns a :class:`CliError` into one
line on stderr and exit code 2. Stage ``cli.py`` modules import no torch, so ``--help`` is
instant; each ``run`` imports its stage's body when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mil.config import add_config_arguments, load_yaml, resolve_config
from mil.errors import CliError

log = logging.getLogger("mil")

# Every stage's command, in pipeline order: name -> module holding its ``COMMAND``.
STAGES = {
    "synth": "mil.synth.cli",
    "extract": "mil.extract.cli",
    "blast": "mil.blast.cli",
    "fit": "mil.train.cli:FIT",
    "predict": "mil.train.cli:PREDICT",
    "heatmap": "mil.explain.cli",
    "store": "mil.store.cli",
    "review": "mil.review.cli",
    "demo": "mil.demo",
    "bench": "mil.bench.cli",
}


@dataclass(frozen=True)
class Command:
    """One command: ``run(args)`` gets the parsed flags, with the resolved config as ``args.cfg``."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int | None] | None = None
    config: type | None = None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    subcommands: Sequence[Command] = field(default_factory=tuple)
    description: str = ""


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (or DEBUG) lines to stderr in a short format."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )


def split_ids(text: str | None) -> list[str] | None:
    """``--slides A,B`` -> ['A', 'B']; empty or absent -> None (meaning: every slide)."""
    ids = [s for s in (text or "").split(",") if s]
    return ids or None


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a CLI body; a :class:`CliError` (a user mistake) becomes one line and exit code 2."""
    try:
        return body()
    except CliError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; completed work is kept, re-run to resume", file=sys.stderr)
        return 130


def _add_command(parser: argparse.ArgumentParser, cmd: Command) -> None:
    if cmd.subcommands:
        sub = parser.add_subparsers(dest=f"_{cmd.name}_command", required=True, metavar="COMMAND")
        for child in cmd.subcommands:
            _add_command(sub.add_parser(child.name, help=child.help,
                                        description=child.description or child.help), child)
        return
    if cmd.arguments is not None:
        cmd.arguments(parser)
    parser.add_argument("--config", metavar="FILE.yaml", help="options file; flags override it")
    if cmd.config is not None:
        add_config_arguments(parser, cmd.config)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(_command=cmd, _parser=parser)


def build_parser(cmd: Command, prog: str) -> argparse.ArgumentParser:
    """The argparse parser of one command (and its subcommands)."""
    parser = argparse.ArgumentParser(prog=prog, description=cmd.description or cmd.help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_command(parser, cmd)
    return parser


def _yaml_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser,
                   argv: Sequence[str]) -> argparse.Namespace:
    """For a command without a config dataclass: YAML values become defaults, flags still win."""
    data = load_yaml(args.config)
    known = {a.dest for a in args._parser._actions} - {"help", "config", "verbose"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CliError(f"config file {args.config}: unknown option(s) {', '.join(unknown)}")
    args._parser.set_defaults(**data)
    return parser.parse_args(argv)


def run_command(cmd: Command, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse ``argv`` for ``cmd`` and run it, as ``python -m mil.<name>`` would."""
    label = f"mil.{cmd.name}"
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(cmd, prog or f"python -m {label}")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        nonlocal args
        leaf: Command = args._command
        if leaf.config is not None:
            args.cfg = resolve_config(leaf.config, args)
        elif args.config:
            args = _yaml_defaults(args, parser, argv)
        assert leaf.run is not None, f"command {leaf.name} has no run"
        return int(leaf.run(args) or 0)

    return run_cli(body, label)


def stage_command(name: str) -> Command:
    """The :class:`Command` a stage declares (imports the stage's light ``cli`` module)."""
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr or "COMMAND")


def main(argv: Sequence[str] | None = None) -> int:
    """``cellmil <stage> ...``: every stage under one console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        width = max(map(len, STAGES))
        lines = [f"  {n:<{width}}  {stage_command(n).help}" for n in STAGES]
        print("usage: cellmil STAGE [options]   (cellmil STAGE --help for its options)\n\n"
              "stages, in pipeline order:\n" + "\n".join(lines), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run_command(stage_command(argv[0]), argv[1:], prog=f"cellmil {argv[0]}")

