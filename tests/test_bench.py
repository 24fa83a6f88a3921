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

    import torch

    from mil.extract.engine import importable

    calls = []
    for name, module in bench.BENCHMARKS.items():
        mod = importlib.import_module(module)
        monkeypatch.setattr(mod, "run", lambda args, n=name: calls.append((n, args)) or {"n": n})
        monkeypatch.setattr(mod, "table", lambda r: f"table {r['n']}")
        monkeypatch.setattr(mod, "markdown", lambda r: [(f"row {r['n']}", "figure")])
    assert bench.main(["all", "--quick", "--out", str(tmp_path)]) == 0
    ran = [n for n in bench.BENCHMARKS if n != "gpu" or torch.cuda.is_available()]
    assert [c[0] for c in calls] == ran
    assert next(a for n, a in calls if n == "store").bags == 100  # quick sizes applied
    ext = next(a for n, a in calls if n == "extract")  # the README's rows: serial, int8, compile
    assert ext.serial_too and ext.int8 == importable("openvino")
    assert next(a for n, a in calls if n == "fit").compile
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) == {"machine", "benchmarks", *bench.BENCHMARKS}
    if not torch.cuda.is_available():
        assert saved["gpu"] == {"skipped": "no CUDA device on this machine"}
    assert "table fit" in (tmp_path / "bench.txt").read_text()
    md = (tmp_path / "bench.md").read_text()
    assert "| row fit | figure |" in md and saved["machine"]["cpu"] in md
    assert "| benchmark | figure |" in md


def test_markdown_regenerates_the_table_from_saved_json(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Single benchmarks' --json files make the same table rows as the module's markdown()."""
    from mil.bench import store

    out = tmp_path / "store.json"
    assert bench.main(["store", "--bags", "2", "--cells", "3", "--dim", "4", "--backends", "h5",
                       "--dir", str(tmp_path), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "store" and "cpu" in saved["machine"]
    capsys.readouterr()
    assert bench.main(["markdown", str(out)]) == 0
    text = capsys.readouterr().out
    what, figure = store.markdown(saved)[0]
    assert f"| {what} | {figure} |" in text and saved["machine"]["cpu"] in text
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert bench.main(["markdown", str(tmp_path / "other.json")]) == 2


def test_fit_benchmark_rows_and_ratios(tmp_path: Path, one_thread: None) -> None:
    """(d) ceiling, (a) padded and (a0) legacy alternate; ratios are per-round ceiling/row."""
    out = tmp_path / "fit.json"
    assert bench.main(["fit", "--bags", "8", "--cells", "6", "--dim", "16", "--batch-size", "4",
                       "--rounds", "2", "--dir", str(tmp_path), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for row in ("ceiling", "padded", "legacy"):
        assert len(r[row]["rounds_epoch_s"]) == 2 and r[row]["epoch_s"] == min(r[row]["rounds_epoch_s"])
    q = r["ratios"]["padded/ceiling"]
    assert q["rounds"] == pytest.approx([c / p for c, p in zip(
        r["ceiling"]["rounds_epoch_s"], r["padded"]["rounds_epoch_s"], strict=True)])
    assert r["padded_over_ceiling"] == pytest.approx(q["median"])
    assert r["bs1_epoch_s"] > 0 and r["stream"]["peak_rss_mb"] > 0
    assert r["stream"]["ru_maxrss_mb"] > 0 and r["preload"]["cpu_s"] > 0
    assert r["malloc_tuned"] is True  # as mil.fit on the CPU
    assert bench.main(["fit", "--bags", "4", "--cells", "3", "--dim", "8", "--batch-size", "2",
                       "--rounds", "1", "--no-stream", "--no-legacy", "--no-malloc-tuning",
                       "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["malloc_tuned"] is False and set(r["ratios"]) == {"padded/ceiling"}
    assert bench.main(["fit", "--rounds", "0"]) == 2


def test_dense_batches_are_views_of_the_same_total_size() -> None:
    import torch

    from mil.bench.epochs import dense_batches

    dense, labels = torch.randn(10, 3, 4), torch.arange(10)
    batches = list(dense_batches(dense, labels, 4, steps=3))
    assert [b["feats"].shape[0] for b in batches] == [4, 4, 4]
    assert all(b["feats"].data_ptr() >= dense.data_ptr() and b["mask"].all() for b in batches)
    assert sum(b["feats"].numel() for b in batches) == 3 * 4 * 3 * 4


def test_legacy_model_computes_what_the_fused_one_does() -> None:
    import torch

    from mil.bench.epochs import make_model
    from mil.bench.legacy import legacy_model

    new = make_model(8, 3).eval()
    old = legacy_model(make_model(8, 3)).eval()
    assert "pool.attn_v.weight" in old.state_dict() and "pool.attn_vu.weight" in new.state_dict()
    feats = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(old(feats, mask).logits, new(feats, mask).logits)
    fresh = make_model(8, 3, seed=1).eval()
    fresh.load_state_dict(old.state_dict())  # the old layout loads through the pre-hook
    torch.testing.assert_close(fresh(feats, mask).attn, old(feats, mask).attn)


def test_scale_benchmark_quick(tmp_path: Path, one_thread: None) -> None:
    """Fresh process per fit size, fitted exponents, extraction sizes, the machine record."""
    out = tmp_path / "scale.json"
    assert bench.main(["scale", "--quick", "--bags", "4,8", "--cells", "4,8", "--base-bags", "4",
                       "--base-cells", "4", "--extract-cells", "4,8", "--engine", "torch", "--images",
                       str(tmp_path / "none"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    f = r["fit"]
    assert [p["bags"] for p in f["by_bags"]] == [4, 8] and [p["cells"] for p in f["by_cells"]] == [4, 8]
    assert f["by_cells"][0] == f["by_bags"][0]  # 4 x 4 is measured once
    assert r["dim"] == 64  # the quick size where no flag was given
    assert all(p["peak_rss_mb"] > 0 and p["ru_maxrss_mb"] > 0 and p["epoch_s"] > 0
               for p in f["by_bags"] + f["by_cells"])
    from mil.bench.scale import exponent

    assert f["exponents"]["stream_rss_vs_bags"] == pytest.approx(
        exponent([4, 8], [p["peak_rss_mb"] for p in f["by_bags"]]))
    assert [p["cells"] for p in r["extract"]["points"]] == [4, 8]
    assert r["extract"]["exponents"]["time_vs_cells"] is not None
    assert "cpu" in r["machine"] and r["benchmark"] == "scale"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.json"]  # stores removed


def test_exponent_fits_the_log_log_slope() -> None:
    from mil.bench.scale import exponent

    assert exponent([1, 2, 4], [3, 6, 12]) == pytest.approx(1.0)
    assert exponent([10, 100], [5, 5]) == pytest.approx(0.0)
    assert exponent([3, 3], [1, 2]) is None


def test_gpu_check_cpu_path(tmp_path: Path, one_thread: None) -> None:
    """The CI path of the GPU check: --device cpu --quick writes one JSON with both parts."""
    import torch

    assert bench.main(["gpu", "--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu.json").read_text())
    assert r["device"] == "cpu" and r["extract"]["precision"] == "bf16"
    assert r["extract"]["engine"]["engine"] == "torch" and r["extract"]["cellmil"]["cells"] == 8
    f = r["fit"]
    assert f["precision"] == "bf16" and f["speedup"] == pytest.approx(f["bs1_epoch_s"] / f["padded_epoch_s"])
    if not torch.cuda.is_available():
        assert bench.main(["gpu", "--out", str(tmp_path / "x")]) == 2  # one-line error, no GPU


@pytest.mark.slow
def test_extract_benchmark_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(a), (e), (b), (b0), (e8), (b8) alternate for --rounds rounds; (b) re-extracts every cell."""
    pytest.importorskip("openvino", reason="the [cpu] extra is not installed")
    out = tmp_path / "extract.json"
    assert bench.main(["extract", "--backbone", "test_efficientnet", "--image-size", "32",
                       "--cells", "7", "--cells-per-slide", "3", "--batch-size", "4",
                       "--rounds", "2", "--images", str(tmp_path / "none"), "--device", "cpu",
                       "--serial-too", "--int8", "--json", str(out), "--dir", str(tmp_path / "w")]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == "generated" and res["batch_size"] == 4 and res["workers"] == 0
    # (e8) measures the int8 model (b8) runs: one conversion, calibrated as mil.extract does
    assert len(list((tmp_path / "w" / "cellmil_int8.h5.engines").iterdir())) == 1
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
    for row in ("engine_ceiling", "cellmil_plain", "cellmil_serial", "int8_ceiling", "int8_cellmil"):
        assert len(res[row]["rounds_cells_per_s"]) == 2
    assert res["stain_norm"] == "od-slide"  # mil.extract's default; (bn) runs without it
    r = res["ratios"]["cellmil/engine_ceiling"]
    assert r["rounds"] == pytest.approx([b / a for a, b in zip(
        res["engine_ceiling"]["rounds_cells_per_s"], res["cellmil"]["rounds_cells_per_s"],
        strict=True)])
    assert set(res["ratios"]) == {"cellmil/ceiling", "engine_ceiling/ceiling",
                                  "cellmil/engine_ceiling", "cellmil_serial/engine_ceiling",
                                  "cellmil_plain/engine_ceiling", "cellmil/cellmil_plain",
                                  "cellmil/serial_bound",
                                  "int8_ceiling/ceiling", "int8_cellmil/ceiling",
                                  "int8_cellmil/int8_ceiling"}


@pytest.mark.parametrize("stain", ["od-slide", "none"])
def test_extract_benchmark_torch_engine_has_no_engine_rows(tmp_path: Path, stain: str) -> None:
    out = tmp_path / "extract.json"
    assert bench.main(["extract", "--backbone", "test_efficientnet", "--image-size", "32",
                       "--cells", "4", "--batch-size", "4", "--rounds", "1", "--skip-naive",
                       "--images", str(tmp_path / "none"), "--device", "cpu", "--engine",
                       "torch", "--stain-norm", stain, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["engine"]["engine"] == "torch" and "engine_ceiling" not in res
    assert res["stain_norm"] == stain and ("cellmil_plain" in res) == (stain != "none")
    assert set(res["ratios"]) == {"cellmil/ceiling", "cellmil/serial_bound"} | (
        {"cellmil/cellmil_plain"} if stain != "none" else set())
    x, e = res["decode"]["rounds_cells_per_s"][0], res["ceiling"]["rounds_cells_per_s"][0]
    assert x > 0 and res["serial_bound"]["rounds_cells_per_s"][0] == pytest.approx(1 / (1 / x + 1 / e))


def test_extract_benchmark_bad_rounds_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["extract", "--rounds", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rounds" in err
