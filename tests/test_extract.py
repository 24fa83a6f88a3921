"""python -m mil.extract: decoding, bad files, resume, kill -9, compatibility, DDP, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil.extract.cli import main
from mil.extract.config import DELAY_ENV, config_path
from mil.extract.images import load_image, resize_batch, to_rgb
from mil.store import open_store

TINY = ["--backbone", "test_efficientnet", "--weights", "none", "--image-size", "32", "-q"]
MATEK = Path(__file__).resolve().parents[2] / "shared" / "data" / "matek_lmu"


def make_cohort(root: Path, *, slides: int = 3, cells: int = 4, size: int = 40, seed: int = 0) -> Path:
    """``root/slide<i>/cell<j>.jpg`` of random colour blobs."""
    rng = np.random.default_rng(seed)
    for s in range(slides):
        d = root / f"slide{s}"
        d.mkdir(parents=True)
        for c in range(cells):
            arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"cell{c}.jpg", quality=90)
    return root


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def snapshot(path: Path) -> dict[str, tuple]:
    with open_store(path) as st:
        return {sid: (st.features(sid).astype(np.float32), st.strings(sid, "cell_ids"),
                      st.strings(sid, "paths"), st.strings(sid, "failed")) for sid in st.slides()}


def assert_same(a: dict, b: dict, atol: float = 0.0, rtol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    for sid in a:
        assert a[sid][1:] == b[sid][1:], sid
        np.testing.assert_allclose(a[sid][0], b[sid][0], atol=atol, rtol=rtol)


# -- decoding -----------------------------------------------------------------------------------
def test_decode_modes(tmp_path) -> None:
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 29]) == (255, 255, 255)
    grey16 = np.array([[0, 257 * 100, 65535]], np.uint16)
    tif = tmp_path / "g16.tif"
    Image.fromarray(grey16).save(tif)
    assert Image.open(tif).mode.startswith("I;16")
    assert np.asarray(to_rgb(Image.open(tif)))[0, :, 0].tolist() == [0, 100, 255]
    for mode in ("L", "P", "CMYK", "LA"):
        im = Image.new(mode, (50, 30))
        path = tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        im.save(path)
        assert load_image(path, 24).shape == (24, 24, 3)  # non-square: resize + centre crop
    big = tmp_path / "big.tiff"
    Image.fromarray(rgba, "RGBA").save(big)
    assert load_image(big, 16).dtype == np.uint8


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos"])
@pytest.mark.parametrize(("h", "w", "size"), [(400, 400, 224), (401, 333, 224), (30, 20, 40)])
def test_resize_centre_matches_pillow(h, w, size, interpolation) -> None:
    """Shorter side to S + centre crop, within one grey level of Pillow (down- and upsampling)."""
    from mil.extract.images import RESAMPLE

    im = Image.fromarray((np.random.default_rng(h).random((h, w, 3)) * 255).astype(np.uint8))
    import torch

    ours = resize_batch([torch.from_numpy(np.array(im))], size, interpolation)[0].numpy().astype(int)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    ref = np.asarray(im.resize((nw, nh), RESAMPLE[interpolation]))[top:top + size, left:left + size]
    diff = np.abs(ours - ref.astype(int))
    assert ours.shape == (size, size, 3) and diff.max() <= 1 and diff.mean() < 0.02


def test_jpeg_decoders_agree_and_fallback(tmp_path, monkeypatch) -> None:
    """TorchCodec's JPEG pixels equal Pillow's; without TorchCodec, Pillow decodes them."""
    import mil.extract.images as ed

    rng = np.random.default_rng(1)
    files = []
    for mode, ext in (("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg"), ("RGB", "png")):
        arr = (rng.random((37, 53, 4 if mode == "CMYK" else 3)) * 255).astype(np.uint8)
        im = Image.fromarray(arr[..., :3]).convert(mode) if mode != "CMYK" else Image.fromarray(arr, "CMYK")
        files.append(tmp_path / f"x_{mode}.{ext}")
        im.save(files[-1], progressive=mode == "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": TorchCodec would apply it, Pillow and timm do not
    files.append(tmp_path / "x_exif.jpg")
    Image.fromarray((rng.random((30, 50, 3)) * 255).astype(np.uint8)).save(files[-1], exif=exif.tobytes())
    pillow = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    ed._jpeg_decoder.cache_clear()
    assert [np.array_equal(ed.decode(f).numpy(), p) for f, p in zip(files, pillow, strict=True)] == [True] * 5
    if ed._jpeg_decoder() is None:
        pytest.skip("TorchCodec not importable here: only the Pillow path was checked")
    monkeypatch.setattr(ed, "_jpeg_decoder", lambda: None)
    assert all(np.array_equal(ed.decode(f).numpy(), p) for f, p in zip(files, pillow, strict=True))


def test_batch_decoding_threads_sizes_and_failures(tmp_path, monkeypatch) -> None:
    """A batch decoded on threads, in chunks, with mixed sizes and bad files, equals one-by-one
    decoding."""
    import torch

    import mil.extract.images as ed
    from mil.extract.images import CellImages, collate_cells

    monkeypatch.setattr(ed, "DECODE_CHUNK", 4)  # the batch of 6 spans two chunks

    rng = np.random.default_rng(2)
    paths = []
    for k, (h, w) in enumerate([(40, 40), (30, 50), (40, 40), (0, 0), (64, 20), (40, 40)]):
        paths.append(str(tmp_path / f"c{k}.jpg"))
        if h == 0:
            Path(paths[-1]).write_bytes(b"\xff\xd8\xffjunk")
            continue
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(paths[-1])
    threaded = CellImages(paths, 24, threads=3)
    index, x, ok = collate_cells(threaded.__getitems__(list(range(len(paths)))))
    assert index.tolist() == list(range(6)) and ok.tolist() == [True] * 3 + [False] + [True] * 2
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.uint8
    assert x.is_contiguous(memory_format=torch.channels_last)
    for i, p in enumerate(paths):
        if i != 3:
            assert np.array_equal(x[i].permute(1, 2, 0).numpy(), load_image(p, 24)), p
    # each decoding thread resizing its own image (compiled engines): the same pixels
    each = CellImages(paths, 24, threads=3, resize_each=True).__getitems__(list(range(len(paths))))
    assert torch.equal(collate_cells(each)[1], x)
    assert x[3].sum() == 0
    single = CellImages(paths, 24)
    assert all(torch.equal(single[i][1], x[i].permute(1, 2, 0)) for i in range(6))


def test_normalise_matches_reference() -> None:
    import torch

    from mil.extract.images import normalise

    x = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # (B, 3, H, W)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = normalise(x, mean, std)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


def test_runtime_defaults_follow_the_device() -> None:
    """CPU: decode in the main process, batch 64; GPU: worker processes, batch 128."""
    from mil.extract.config import ExtractConfig, resolve_runtime

    cpu = resolve_runtime(ExtractConfig(), "cpu")
    assert (cpu.batch_size, cpu.workers) == (64, 0)
    gpu = resolve_runtime(ExtractConfig(), "cuda")
    assert gpu.batch_size == 128 and gpu.workers >= 1
    mine = resolve_runtime(ExtractConfig(batch_size=5, workers=2), "cpu")
    assert (mine.batch_size, mine.workers) == (5, 2)


# -- end to end ---------------------------------------------------------------------------------
def test_bad_files_resume_and_config(tmp_path, capsys) -> None:
    src = make_cohort(tmp_path / "cells", slides=3, cells=3)
    good = (src / "slide0" / "cell0.jpg").read_bytes()
    (src / "slide0" / "empty.jpg").write_bytes(b"")
    (src / "slide1" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (src / "slide1" / "text.png").write_text("not an image")
    (src / "slide2" / "cell1.jpg").write_bytes(b"\xff\xd8junk")
    for p in (src / "slide3").mkdir() or range(2):
        (src / "slide3" / f"bad{p}.tif").write_bytes(b"II*\x00broken")
    out = tmp_path / "f.h5"
    assert run(src, out, *TINY, "--workers", "1", "--batch-size", "4") == 0
    line = capsys.readouterr().out
    assert "3 slides" in line and "(6 failed)" in line and "slide3" in line
    with open_store(out) as st:
        assert st.slides() == ["slide0", "slide1", "slide2"]
        assert st.strings("slide0", "failed") == ["slide0/empty.jpg"]
        assert sorted(st.strings("slide1", "failed")) == ["slide1/text.png", "slide1/truncated.jpg"]
        assert st.strings("slide2", "cell_ids") == ["cell0", "cell2"]
        assert st.features("slide0").shape == (3, st.attrs["feature_dim"])
        assert st.features("slide0").dtype == np.float16
        attrs = st.attrs
    assert attrs["backbone"] == "test_efficientnet" and attrs["image_size"] == 32
    assert attrs["weights"]["sha256"] == attrs["weights_sha256"] and attrs["dtype"] == "float16"
    assert "timm" in attrs["versions"] and attrs["config"]["batch_size"] == 4
    assert config_path(out).is_file()
    before = snapshot(out)
    assert run(src, out, *TINY, "--workers", "0", "--config", config_path(out)) == 0
    assert "3 slides already complete" in capsys.readouterr().out
    assert_same(before, snapshot(out))


def test_incompatible_append_refused_then_overwrite(tmp_path, capsys) -> None:
    src = make_cohort(tmp_path / "cells", slides=2, cells=2)
    out = tmp_path / "f.zarr"
    assert run(src, out, *TINY, "--workers", "0") == 0
    capsys.readouterr()
    import yaml

    assert yaml.safe_load(config_path(out).read_text())["batch_size"] == 64  # resolved, saved
    assert run(src, out, *TINY, "--workers", "0", "--image-size", "48") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image_size" in err and "--overwrite" in err
    assert run(src, out, *TINY, "--workers", "0", "--image-size", "48", "--overwrite") == 0
    with open_store(out) as st:
        assert st.attrs["image_size"] == 48 and len(st.slides()) == 2


@pytest.mark.parametrize("case", ["missing", "empty", "suffix", "batch"])
def test_cli_errors_are_one_line(tmp_path, capsys, case) -> None:
    (tmp_path / "empty").mkdir()
    argv = {"missing": [tmp_path / "nope", tmp_path / "f.h5"],
            "empty": [tmp_path / "empty", tmp_path / "f.h5"],
            "suffix": [tmp_path / "empty", tmp_path / "f.npy"],
            "batch": [tmp_path / "empty", tmp_path / "f.h5", "--batch-size", "0"]}[case]
    assert run(*argv, *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mil.extract: error:")


def test_manifest_with_coords(tmp_path) -> None:
    src = make_cohort(tmp_path / "cells", slides=1, cells=3)
    rows = ["slide_id,path,cell_id,x,y"] + [
        f"patient {i % 2},cells/slide0/cell{i}.jpg,c{i},{i}.5,{10 * i}" for i in range(3)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "m.h5"
    assert run(tmp_path / "m.csv", out, *TINY, "--workers", "0") == 0
    with open_store(out) as st:
        bag = st.read("patient 0")
        assert bag.cell_ids == ["c0", "c2"] and bag.paths[0] == "cells/slide0/cell0.jpg"
        np.testing.assert_array_equal(bag.coords, [[0.5, 0], [2.5, 20]])
    assert src.exists()


def _cli(*argv: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mil.extract", *map(str, argv)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _complete_slides(out: Path) -> int:
    root = out / "slides"
    return sum(1 for d in root.glob("*/zarr.json")
               if json.loads(d.read_text())["attributes"].get("complete")) if root.exists() else 0


@pytest.mark.slow
def test_kill_9_then_rerun_equals_clean_run(tmp_path) -> None:
    src = make_cohort(tmp_path / "cells", slides=6, cells=3)
    args = [*TINY, "--workers", "0", "--batch-size", "3"]  # one batch = one slide, every run
    killed = tmp_path / "killed.zarr"
    proc = _cli(src, killed, *args, env={DELAY_ENV: "0.3"})
    deadline = time.time() + 60
    while _complete_slides(killed) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 1 <= _complete_slides(killed) < 6, "the run was not killed half-way"
    assert run(src, killed, *args) == 0
    clean = tmp_path / "clean.zarr"
    assert run(src, clean, *args) == 0
    assert_same(snapshot(killed), snapshot(clean))  # same batches, so exactly equal
    assert not (killed / "_staging").exists() or not any((killed / "_staging").iterdir())


@pytest.mark.slow
def test_two_process_ddp_equals_single_process(tmp_path) -> None:
    src = make_cohort(tmp_path / "cells", slides=3, cells=3)
    (src / "slide2" / "bad.jpg").write_bytes(b"")
    ddp = tmp_path / "ddp.h5"
    # Both ranks started at once, as Lightning's launcher (or torchrun) starts them, so that
    # their imports run in parallel: LOCAL_RANK in the environment tells Fabric not to launch.
    port = str(_free_port())
    procs = [_cli(src, ddp, *TINY, "--workers", "0", "--devices", "2", "--device", "cpu",
                  env={"LOCAL_RANK": str(r), "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": port}) for r in (0, 1)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert "3 slides, 9 cells (1 failed)" in results[0][0] and results[1][0] == ""
    assert not (tmp_path / "ddp.h5.parts").exists()
    single = tmp_path / "single.h5"
    assert run(src, single, *TINY, "--workers", "0") == 0
    assert_same(snapshot(ddp), snapshot(single), atol=2e-3, rtol=2e-3)  # other batches


@pytest.mark.realdata
def test_matek_manifest_subset(tmp_path) -> None:
    if not (MATEK / "cells.csv").is_file():
        pytest.skip("matek_lmu data not present")
    files = ["myeloblast/MYO_0001.jpg", "myeloblast/MYO_0004.jpg"]
    files += sorted(p.relative_to(MATEK).as_posix() for p in (MATEK / "fifteen_class").glob("*.tiff"))[:2]
    rows = ["slide_id,path"] + [f"s{i % 2},{MATEK / f}" for i, f in enumerate(files)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "m.h5"
    assert run(tmp_path / "m.csv", out, *TINY, "--workers", "0") == 0
    with open_store(out) as st:
        assert st.slides() == ["s0", "s1"] and sum(st.n_cells(s) for s in st.slides()) == 4
        assert all(np.isfinite(st.features(s)).all() for s in st.slides())
