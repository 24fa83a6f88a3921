"""``python -m mil.bench <benchmark>``: throughput benchmarks, one subcommand each.

    python -m mil.bench extract --rounds 5 --json extract.json
    python -m mil.bench store --bags 1000
    python -m mil.bench all --out bench/          # every benchmark: bench.json, bench.txt, bench.md
    python -m mil.bench markdown bench/bench.json # the README's table from saved JSON

Each benchmark is a module of :mod:`mil.bench` with ``HELP``, ``arguments(parser)``,
``run(args) -> dict`` (JSON-able), ``table(results) -> str`` and ``markdown(results)`` (rows of
the README's table); register it in ``BENCHMARKS``. A module may have ``skip_reason(args)``
(``gpu``: no CUDA device), which ``all`` records instead of running it.
Run benchmarks on a quiet machine (the load average is recorded where the benchmark does so).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from types import ModuleType

from mil.bench.machine import machine
from mil.bench.report import load, markdown
from mil.cli import Command, build_parser, run_command
from mil.extract.engine import importable

BENCHMARKS = {"extract": "mil.bench.extract", "store": "mil.bench.store", "fit": "mil.bench.fit",
              "scale": "mil.bench.scale", "gpu": "mil.bench.gpu"}
# ``all``: every row the README's table reports (int8 and serial extraction, torch.compile)
FULL_ARGS = {"extract": ["--int8", "--serial-too"], "fit": ["--compile"]}
# ``all --quick``: smaller sizes per benchmark, for a smoke run or a slow machine
QUICK_ARGS = {"store": ["--bags", "100"], "extract": ["--cells", "128", "--rounds", "2"], "fit": ["--quick"],
              "scale": ["--quick"], "gpu": ["--quick"]}


def _report(name: str, mod: ModuleType, args: argparse.Namespace) -> None:
    before = machine()  # the load as the benchmark starts
    results = mod.run(args)
    print(mod.table(results))
    if args.json:
        saved = {"benchmark": name, "machine": results.get("machine") or before, **results}
        Path(args.json).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")


def _benchmark(name: str, module: str) -> Command:
    mod = importlib.import_module(module)

    def arguments(p: argparse.ArgumentParser) -> None:
        mod.arguments(p)
        p.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    return Command(name, mod.HELP, run=lambda args: _report(name, mod, args), arguments=arguments)


def _all_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench", help="folder for bench.json, bench.txt, bench.md")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")


def run_all(args: argparse.Namespace) -> None:
    """Every benchmark with its defaults and FULL_ARGS (and QUICK_ARGS); one JSON and one table
    in ``out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parser = build_parser(COMMAND, "python -m mil.bench")
    results: dict[str, object] = {"machine": machine(), "benchmarks": list(BENCHMARKS)}
    tables = [f"machine: {json.dumps(results['machine'])}"]
    for name, module in BENCHMARKS.items():
        print(f"== bench {name}", flush=True)
        extra = [a for a in FULL_ARGS.get(name, []) if name != "extract" or importable("openvino")
                 or a != "--int8"]  # int8 needs OpenVINO (the [cpu] extra)
        bench_args = parser.parse_args([name, *extra, *(QUICK_ARGS[name] if args.quick else []),
                                        *(["--out", str(out)] if name == "gpu" else [])])
        mod = importlib.import_module(module)
        reason = mod.skip_reason(bench_args) if hasattr(mod, "skip_reason") else None
        if reason:
            results[name] = {"skipped": reason}
            tables.append(f"{name}: not run: {reason}")
        else:
            results[name] = mod.run(bench_args)
            tables.append(mod.table(results[name]))
        print(tables[-1], flush=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "bench.txt").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(markdown(results, BENCHMARKS), encoding="utf-8")
    print(f"wrote {out / 'bench.json'}, {out / 'bench.txt'} and {out / 'bench.md'}")


def _markdown_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("json", nargs="+", help="an `all` bench.json, or single benchmarks' --json files")


def run_markdown(args: argparse.Namespace) -> None:
    """Print the README's benchmark table from saved JSON."""
    print(markdown(load(args.json), BENCHMARKS), end="")


COMMAND = Command(
    name="bench", help="throughput benchmarks (extract, store, fit, scale, gpu, all)",
    description=__doc__ or "",
    subcommands=(*(_benchmark(n, m) for n, m in BENCHMARKS.items()),
                 Command("all", "run every benchmark; write one JSON and one table",
                         run=run_all, arguments=_all_args),
                 Command("markdown", "the README's benchmark table from saved JSON",
                         run=run_markdown, arguments=_markdown_args)),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
