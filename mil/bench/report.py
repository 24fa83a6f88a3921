"""The README's benchmark table, regenerated from benchmark JSON.

    python -m mil.bench all --out bench/              # writes bench/bench.md beside bench.json
    python -m mil.bench markdown bench/bench.json     # the table again from a saved run
    python -m mil.bench markdown fit.json scale.json  # or from single benchmarks' --json files

Each benchmark module has ``markdown(results) -> list[(what, figure)]``; the table names the
machine (CPU, cores, GPU, load average, date) it was measured on.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from mil.errors import CliError


def load(paths: list[str]) -> dict[str, Any]:
    """One ``{"machine": ..., name: results}`` from ``all`` JSON (it lists ``"benchmarks"``) or
    single-benchmark JSONs (each carries ``"benchmark": name``); the first machine record wins."""
    out: dict[str, Any] = {}
    for p in paths:
        try:
            data = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read benchmark JSON {p}: {e}") from None
        if not isinstance(data, dict) or not ("benchmark" in data or "benchmarks" in data):
            raise CliError(f"{p} is not a benchmark JSON (from `all --out` or a benchmark's --json)")
        if "benchmark" in data:
            out.setdefault("machine", data.get("machine"))
            out[data["benchmark"]] = data
        else:
            out = {**data, **out, "machine": out.get("machine") or data.get("machine")}
    return out


def markdown(results: dict[str, Any], benchmarks: dict[str, str]) -> str:
    """The markdown table of every benchmark in ``results`` (in ``benchmarks`` order)."""
    m = results.get("machine") or {}
    lines = [f"Measured on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, "
             f"{m.get('gpu') or 'no GPU'}), 1-minute load average {m.get('load_avg_1min', 0):.1f} "
             f"when the record was taken, {m.get('date', '?')}, torch {m.get('torch', '?')}, cellmil "
             f"{m.get('cellmil', '?')}:", "", "| benchmark | figure |", "| --- | --- |"]
    for name, module in benchmarks.items():
        if name not in results:
            continue
        r = results[name]
        if "skipped" in r:
            lines.append(f"| {name} | not run: {r['skipped']} |")
            continue
        for what, figure in importlib.import_module(module).markdown(r):
            lines.append(f"| {what} | {figure} |")
    return "\n".join(lines) + "\n"
