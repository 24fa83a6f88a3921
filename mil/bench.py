"""``python -m mil.bench <benchmark>``: throughput benchmarks, one subcommand each.

    python -m mil.bench extract --rounds 5 --json extract.json
    python -m mil.bench store --bags 1000
    python -m mil.bench all --out bench/          # every benchmark: bench/bench.json + bench.txt

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
# ``all --quick``: smaller sizes per benchmark, for a smoke run or a slow machine
QUICK_ARGS = {"store": ["--bags", "100"], "extract": ["--cells", "128", "--rounds", "2"], "fit": ["--quick"]}


def machine() -> dict[str, object]:
    """What the figures were measured on: CPU, cores, load, versions, date."""
    import os
    import platform
    from datetime import UTC, datetime

    import torch

    import mil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "load_avg_1min": os.getloadavg()[0],
            "torch": torch.__version__, "cellmil": mil.__version__, "python": platform.python_version(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def run_all(out: Path, quick: bool, parser: argparse.ArgumentParser) -> int:
    """Every benchmark with its defaults (or QUICK_ARGS); one JSON and one table in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"machine": machine()}
    tables = [f"machine: {json.dumps(results['machine'])}"]
    for name, module in BENCHMARKS.items():
        print(f"== bench {name}", flush=True)
        args = parser.parse_args([name, *(QUICK_ARGS[name] if quick else [])])
        mod = importlib.import_module(module)
        results[name] = mod.run(args)
        tables.append(mod.table(results[name]))
        print(tables[-1], flush=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "bench.txt").write_text("\n\n".join(tables) + "\n", encoding="utf-8")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.txt'}")
    return 0


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
    every = sub.add_parser("all", help="run every benchmark; write one JSON and one table")
    every.add_argument("--out", default="bench", help="folder for bench.json and bench.txt")
    every.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    every.set_defaults(_module=None)
    return p


def main(argv: list[str] | None = None) -> int:
    from mil.cli import run_cli, setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        if args._module is None:
            return run_all(Path(args.out), args.quick, parser)
        mod = importlib.import_module(args._module)
        results = mod.run(args)
        print(mod.table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        return 0

    return run_cli(body, "mil.bench")


if __name__ == "__main__":
    sys.exit(main())
