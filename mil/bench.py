"""``python -m mil.bench <benchmark>``: throughput benchmarks, one subcommand each.

    python -m mil.bench extract --cells 512 --json extract.json
    python -m mil.bench store --bags 1000

Each benchmark lives in ``mil/bench_<name>.py`` with three functions: ``add_parser(sub)``,
``run(args) -> dict`` (JSON-able) and ``table(results) -> str``. Register it in ``BENCHMARKS``.
Run benchmarks on a quiet machine (the load average is recorded where the benchmark does so).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = {"extract": "mil.bench_extract", "store": "mil.bench_store", "fit": "mil.bench_fit"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mil.bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="benchmark", required=True)
    for module in BENCHMARKS.values():
        try:
            sp = importlib.import_module(module).add_parser(sub)
        except ImportError:  # a benchmark not written yet
            continue
        sp.add_argument("--json", metavar="FILE", help="also write the results as JSON")
        sp.set_defaults(_module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    from mil.cli import run_cli, setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()

    def body() -> int:
        mod = importlib.import_module(args._module)
        results = mod.run(args)
        print(mod.table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return 0

    return run_cli(body, "mil.bench")


if __name__ == "__main__":
    sys.exit(main())
