import json
from pathlib import Path

import pytest

from mil.bench import cli as bench


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


@pytest.mark.slow
def test_extract_benchmark_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(a), (e), (b), (b0), (e8), (b8) alternate for --rounds rounds; (b) re-extracts every cell."""
    pytest.importorskip("openvino", reason="the [cpu] extra is not installed")
    out = tmp_path / "extract.json"
    assert bench.main(["extract", "--backbone", "test_efficientnet", "--image-size", "32",
                       "--cells", "7", "--cells-per-slide", "3", "--batch-size", "4",
                       "--rounds", "2", "--images", str(tmp_path / "none"), "--device", "cpu",
                       "--serial-too", "--int8", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == "generated" and res["batch_size"] == 4 and res["workers"] == 0
    assert len(res["ceiling"]["rounds_cells_per_s"]) == len(res["cellmil"]["rounds_cells_per_s"]) == 2
    assert res["cellmil"]["cells"] == 7 and res["naive"]["cells_per_s"] > 0
    assert res["cellmil"]["cells_per_s"] == max(res["cellmil"]["rounds_cells_per_s"])
    ratios = [b / a for a, b in zip(res["ceiling"]["rounds_cells_per_s"],
                                    res["cellmil"]["rounds_cells_per_s"], strict=True)]
    assert res["cellmil_over_ceiling"] == pytest.approx(sum(ratios) / 2)  # median of two
    assert res["best_over_best"] == pytest.approx(
        res["cellmil"]["cells_per_s"] / res["ceiling"]["cells_per_s"])
    assert "cellmil/ceiling" in capsys.readouterr().out
    assert res["engine"]["engine"] == "openvino" and res["engine"]["cosine_vs_torch_min"] > 0.9999
    assert res["engine"]["int8"]["precision"] == "int8"
    for row in ("engine_ceiling", "cellmil_serial", "int8_ceiling", "int8_cellmil"):
        assert len(res[row]["rounds_cells_per_s"]) == 2
    r = res["ratios"]["cellmil/engine_ceiling"]
    assert r["rounds"] == pytest.approx([b / a for a, b in zip(
        res["engine_ceiling"]["rounds_cells_per_s"], res["cellmil"]["rounds_cells_per_s"],
        strict=True)])
    assert set(res["ratios"]) == {"cellmil/ceiling", "engine_ceiling/ceiling",
                                  "cellmil/engine_ceiling", "cellmil_serial/engine_ceiling",
                                  "int8_ceiling/ceiling", "int8_cellmil/ceiling",
                                  "int8_cellmil/int8_ceiling"}


def test_extract_benchmark_torch_engine_has_no_engine_rows(tmp_path: Path) -> None:
    out = tmp_path / "extract.json"
    assert bench.main(["extract", "--backbone", "test_efficientnet", "--image-size", "32",
                       "--cells", "4", "--batch-size", "4", "--rounds", "1", "--skip-naive",
                       "--images", str(tmp_path / "none"), "--device", "cpu", "--engine",
                       "torch", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["engine"]["engine"] == "torch" and "engine_ceiling" not in res
    assert set(res["ratios"]) == {"cellmil/ceiling"}


def test_extract_benchmark_bad_rounds_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["extract", "--rounds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rounds" in err
