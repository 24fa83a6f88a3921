import json
from pathlib import Path

import pytest

from mil import bench


def test_store_benchmark_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store.json"
    assert bench.main(["store", "--bags", "3", "--cells", "4", "--dim", "8",
                       "--dir", str(tmp_path), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for backend in ("h5", "zarr"):
        assert res[backend]["read_bags_per_s"] > 0 and res[backend]["gb"] == pytest.approx(3 * 4 * 8 * 2 / 1e9)
    assert "h5" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.json"]  # stores cleaned up


def test_machine_record() -> None:
    m = bench.machine()
    assert {"cpu", "cores", "load_avg_1min", "torch", "cellmil", "date"} <= set(m)


def test_all_runs_every_registered_benchmark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    calls = []
    for name, module in bench.BENCHMARKS.items():
        mod = importlib.import_module(module)
        monkeypatch.setattr(mod, "run", lambda args, n=name: calls.append((n, args)) or {"n": n})
        monkeypatch.setattr(mod, "table", lambda r: f"table {r['n']}")
    assert bench.main(["all", "--quick", "--out", str(tmp_path)]) == 0
    assert [c[0] for c in calls] == list(bench.BENCHMARKS)
    assert next(a for n, a in calls if n == "store").bags == 100  # quick sizes applied
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) == {"machine", *bench.BENCHMARKS}
    assert "table fit" in (tmp_path / "bench.txt").read_text()
