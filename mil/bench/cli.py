"""``python -m mil.bench <benchmark>``: throughput benchmarks, one subcommand each.

    python -m mil.bench extract --rounds 5 --json extract.json
    python -m mil.bench store --bags 1000
    python -m mil.bench all --out bench/          # every benchmark: bench/bench.json + bench.txt

Each benchmark is a module of :mod:`mil.bench` with ``HELP``, ``arguments(parser)``,
``run(args) -> dict`` (JSON-able) and ``table(results) -> str``; register it in ``BENCHMARKS``.
Run benchmarks on a quiet machine (the load average is recorded where the benchmark does so).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from types import ModuleType

from mil.bench.machine import machine
from mil.cli import Command, build_parser, run_command

BENCHMARKS = {"extract": "mil.bench.extract", "store": "mil.bench.store", "fit": "mil.bench.fit"}
# ``all --quick``: smaller sizes per benchmark, for a smoke run or a slow machine
QUICK_ARGS = {"store": ["--bags", "100"], "extract": ["--cells", "128", "--rounds", "2"], "fit": ["--quick"]}


def _report(mod: ModuleType, args: argparse.Namespace) -> None:
    results = mod.run(args)
    print(mod.table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _benchmark(name: str, module: str) -> Command:
    mod = importlib.import_module(module)

    def arguments(p: argparse.ArgumentParser) -> None:
        mod.arguments(p)
        p.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    return Command(name, mod.HELP, run=lambda args: _report(mod, args), arguments=arguments)


def _all_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench", help="folder for bench.json and bench.txt")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")


def run_all(args: argparse.Namespace) -> None:
    """Every benchmark with its defaults (or QUICK_ARGS); one JSON and one table in ``out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parser = build_parser(COMMAND, "python -m mil.bench")
    results: dict[str, object] = {"machine": machine()}
    tables = [f"machine: {json.dumps(results['machine'])}"]
    for name, module in BENCHMARKS.items():
        print(f"== bench {name}", flush=True)
        bench_args = parser.parse_args([name, *(QUICK_ARGS[name] if args.quick else [])])
        mod = importlib.import_module(module)
        results[name] = mod.run(bench_args)
        tables.append(mod.table(results[name]))
        print(tables[-1], flush=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "bench.txt").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.txt'}")


COMMAND = Command(
    name="bench", help="throughput benchmarks (extract, store, fit, all)", description=__doc__ or "",
    subcommands=(*(_benchmark(n, m) for n, m in BENCHMARKS.items()),
                 Command("all", "run every benchmark; write one JSON and one table",
                         run=run_all, arguments=_all_args)),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
