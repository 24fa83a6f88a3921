"""Stain normalisation before the backbone (mil.extract.stain, ``mil.extract --stain-norm``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil.errors import CliError
from mil.extract.cli import main
from mil.extract.stain import (
    DEFAULT_OD,
    DEFAULT_REFERENCE,
    StainNormaliser,
    from_lab,
    lab_stats,
    od_stats,
    od_transfer,
    sample_indices,
    to_lab,
    to_od,
    transfer,
)
from mil.provenance import check_same_features
from mil.store import open_store
from mil.synth.canvas import Stain
from mil.synth.cells import render_cell

TINY = ["--backbone", "test_efficientnet", "--weights", "none", "--image-size", "32", "-q"]
MATEK = Path(__file__).resolve().parents[2] / "shared" / "data" / "matek_lmu"


def crops(stain: Stain, n: int = 6, seed: int = 0) -> list[np.ndarray]:
    kinds = ["blast", "neutrophil", "lymphocyte", "monocyte", "eosinophil", "blast"]
    return [render_cell(np.random.default_rng([seed, i]), kinds[i % 6], size=48, stain=stain) for i in range(n)]


def test_lab_round_trip_and_transfer_hits_the_reference() -> None:
    img = crops(Stain())[0]
    assert np.abs(from_lab(to_lab(img)).astype(int) - img).max() <= 2
    out = transfer(img, lab_stats([img]))
    mean, std = lab_stats([out])
    np.testing.assert_allclose(mean, DEFAULT_REFERENCE[0], atol=0.03)
    np.testing.assert_allclose(std, DEFAULT_REFERENCE[1], rtol=0.25)


def test_slide_normalisation_removes_a_slide_stain_and_keeps_differences_between_cells() -> None:
    plain, tinted = crops(Stain()), crops(Stain(gain=(1.25, 0.95, 0.8)))  # same cells, other stain
    norm = StainNormaliser("reinhard-slide", slide_of=["a"] * 6 + ["b"] * 6)
    norm.fit_slides({"a": plain, "b": tinted})
    import torch

    out = [norm(i, torch.from_numpy(im)).numpy().astype(float) for i, im in enumerate(plain + tinted)]
    # each slide's colour statistics become the reference: the slides' stain gap closes
    gap = lambda x, y: np.abs(lab_stats(x)[0] - lab_stats(y)[0]).max()  # noqa: E731
    u8 = [o.astype(np.uint8) for o in out]
    assert gap(u8[:6], u8[6:]) < 0.2 * gap(plain, tinted)
    np.testing.assert_allclose(lab_stats(u8[6:])[0], DEFAULT_REFERENCE[0], atol=0.03)
    # one transform per slide: a blast and a lymphocyte keep their different mean colours
    assert np.abs(out[0].mean((0, 1)) - out[2].mean((0, 1))).max() > 5


def test_od_slide_undoes_a_stain_gain_per_channel() -> None:
    plain, tinted = crops(Stain()), crops(Stain(gain=(1.3, 0.9, 0.75)))  # same cells, other batch
    norm = StainNormaliser("od-slide", slide_of=["a"] * 6 + ["b"] * 6)
    norm.fit_slides({"a": plain, "b": tinted})
    import torch

    out = [norm(i, torch.from_numpy(im)).numpy().astype(float) for i, im in enumerate(plain + tinted)]
    before = np.mean([np.abs(p.astype(float) - t).mean() for p, t in zip(plain, tinted, strict=True)])
    after = np.mean([np.abs(out[i] - out[6 + i]).mean() for i in range(6)])
    assert after < 0.15 * before  # the batch difference is (almost) gone
    np.testing.assert_allclose(od_stats([o.astype(np.uint8) for o in out[6:]]), DEFAULT_OD, rtol=0.05)


def test_od_transfer_table_gives_the_arithmetic_pixels() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # every grey level, odd shape
    mean_od = np.array([0.31, 0.52, 0.23], np.float32)
    gain = np.asarray(DEFAULT_OD, np.float32) / mean_od
    direct = np.clip(255.0 * np.exp(-to_od(rgb) * gain) + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(od_transfer(rgb, mean_od), direct)
    np.testing.assert_array_equal(od_transfer(rgb[:, ::2], mean_od), direct[:, ::2])  # a strided view


def test_od_stats_from_histograms_is_the_float64_mean_of_every_pixel() -> None:
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (300, 200, 3), dtype=np.uint8) for _ in range(40)]  # 2.4 M px
    exact = np.mean([to_od(im[::2, ::2]).astype(np.float64).reshape(-1, 3) for im in images], axis=(0, 1))
    np.testing.assert_allclose(od_stats(images, step=2), exact, rtol=1e-6)


@pytest.mark.parametrize("mode", ["od-slide", "reinhard-slide"])
def test_slide_statistics_come_from_the_main_pass_decoding_each_crop_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    import mil.extract.images as images
    from mil.extract.images import CellImages

    slides = {"a": crops(Stain(), n=70, seed=1), "b": crops(Stain(gain=(1.3, 0.9, 0.8)), n=5, seed=2)}
    paths, slide_of = [], []
    for sid, ims in slides.items():
        for j, im in enumerate(ims):
            paths.append(str(tmp_path / f"{sid}{j}.png"))
            slide_of.append(sid)
            Image.fromarray(im).save(paths[-1])
    Path(paths[3]).write_bytes(b"not an image")  # an unreadable sample crop of slide a
    reads: list[str] = []
    real = images.decode
    monkeypatch.setattr(images, "decode", lambda p: reads.append(str(p)) or real(p))
    norm = StainNormaliser(mode, slide_of=slide_of)
    ds = CellImages(paths, 32, threads=2, stain=norm)
    out = [row for start in range(0, len(paths), 16) for row in ds.__getitems__(list(range(start, start + 16))[:len(paths) - start])]
    assert sorted(reads) == sorted(paths)  # every crop decoded exactly once
    assert [ok for _, _, ok in out] == [i != 3 for i in range(len(paths))]
    # the statistics are those of each slide's evenly spaced sample, as an eager fit measures them
    eager = StainNormaliser(mode, slide_of=slide_of)
    offset = {"a": 0, "b": 70}
    eager.fit_slides({sid: [ims[j] for j in sample_indices(len(ims)) if offset[sid] + j != 3]
                      for sid, ims in slides.items()})
    for sid in slides:
        np.testing.assert_allclose(np.ravel(norm.slide_stats[sid]), np.ravel(eager.slide_stats[sid]))
    assert not ds._held  # nothing stays decoded after its batch


@pytest.mark.parametrize("each", [False, True], ids=["batch-resize", "resize-each"])
@pytest.mark.parametrize("mode", ["od-slide", "reinhard"])
def test_crops_are_normalised_after_the_resize(tmp_path: Path, mode: str, each: bool) -> None:
    import torch

    from mil.extract.images import CellImages, decode, resize_batch

    paths = []
    for j, im in enumerate(crops(Stain(gain=(1.3, 0.9, 0.8)), n=4)):  # 48 px crops
        paths.append(str(tmp_path / f"c{j}.png"))
        Image.fromarray(im).save(paths[-1])
    norm = StainNormaliser(mode, slide_of=["a"] * 4)
    rows = CellImages(paths, 24, threads=2, resize_each=each, stain=norm).__getitems__([0, 1, 2, 3])
    ref = StainNormaliser(mode, slide_of=["a"] * 4)
    if mode == "od-slide":  # the slide's statistics come from the full-size crops
        ref.fit_slides({"a": [decode(p).numpy() for p in paths]})
        np.testing.assert_array_equal(norm.slide_stats["a"], ref.slide_stats["a"])
    for i, (_, x, ok) in enumerate(rows):
        assert ok
        assert torch.equal(x, ref(i, resize_batch([decode(paths[i])], 24)[0]))
        assert not torch.equal(x, resize_batch([ref(i, decode(paths[i]))], 24)[0])  # not before


def test_a_slide_sample_spans_the_slide_and_takes_every_cell_of_a_small_one() -> None:
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    assert sample_indices(40) == list(range(40))  # it once took only cells 0-24 of 40
    big = sample_indices(1000)
    assert len(big) == 64 and big[0] == 0 and big[-1] == 999
    assert max(np.diff(big)) - min(np.diff(big)) <= 1
    assert sample_indices(1) == [0] and sample_indices(0) == []


def test_a_store_normalised_before_the_resize_is_refused_for_mixing() -> None:
    made_before = {"backbone": "b", "stain_norm": "od-slide(od=0.2501,0.6354,0.1973)"}
    now = StainNormaliser("od-slide").record()
    assert now.startswith(made_before["stain_norm"][:-1]) and ";after=resize" in now
    with pytest.raises(CliError, match="stain_norm"):
        check_same_features(made_before, {**made_before, "stain_norm": now}, "new.h5")


def test_extract_records_stain_norm_and_refuses_mixing(tmp_path: Path, capsys) -> None:
    root = tmp_path / "cohort"
    for s, gain in enumerate([(1.0, 1.0, 1.0), (1.3, 1.0, 0.8)]):
        (root / f"s{s}").mkdir(parents=True)
        for j, im in enumerate(crops(Stain(gain=gain), n=4, seed=s)):
            Image.fromarray(im).save(root / f"s{s}" / f"c{j}.png")
    assert main([str(root), str(tmp_path / "plain.h5"), "--stain-norm", "none", *TINY]) == 0
    assert main([str(root), str(tmp_path / "slide.h5"), "--stain-norm", "reinhard-slide", *TINY]) == 0
    assert main([str(root), str(tmp_path / "default.h5"), *TINY]) == 0
    with open_store(tmp_path / "default.h5") as d:
        assert d.attrs["stain_norm"] == "od-slide(od=0.2501,0.6354,0.1973;after=resize;stats=64crops,step4)"
    with open_store(tmp_path / "plain.h5") as a, open_store(tmp_path / "slide.h5") as b:
        assert a.attrs["stain_norm"] == "none"
        assert b.attrs["stain_norm"].startswith("reinhard-slide(mean=-0.2476")
        assert not np.allclose(a.features("s1"), b.features("s1"))
        with pytest.raises(CliError, match="stain_norm"):
            check_same_features(a.attrs, b.attrs, "slide.h5")
    capsys.readouterr()
    assert main([str(root), str(tmp_path / "slide.h5"), "--stain-norm", "reinhard", *TINY]) != 0
    assert "stain_norm" in capsys.readouterr().err


@pytest.mark.realdata
@pytest.mark.skipif(not MATEK.exists(), reason="needs ../shared/data/matek_lmu")
def test_default_references_are_the_matek_statistics() -> None:
    from mil.extract.images import decode

    paths = sorted(p for p in MATEK.rglob("*") if p.suffix.lower() in (".jpg", ".png", ".tif", ".tiff"))
    assert len(paths) >= 1000
    images = [decode(p).numpy() for p in paths]
    mean, std = lab_stats(images, step=4)
    np.testing.assert_allclose(mean, DEFAULT_REFERENCE[0], atol=1e-3)
    np.testing.assert_allclose(std, DEFAULT_REFERENCE[1], atol=1e-3)
    np.testing.assert_allclose(od_stats(images, step=4), DEFAULT_OD, atol=1e-3)


def test_a_store_from_before_stain_norm_counts_as_unnormalised() -> None:
    old = {"backbone": "b", "dtype": "float16"}  # made before the key existed
    check_same_features(old, {**old, "stain_norm": "none"}, "new.h5")
    with pytest.raises(CliError, match="stain_norm 'reinhard-slide"):
        check_same_features(old, {**old, "stain_norm": "reinhard-slide(mean=0;std=1)"}, "new.h5")


def test_int8_calibration_cells_are_stain_normalised_like_the_extraction(tmp_path: Path, monkeypatch) -> None:
    from mil.extract.engine import cache_key, sample_cells

    paths, slides = [], []
    for s, gain in enumerate([(1.0, 1.0, 1.0), (1.35, 0.9, 0.75)]):
        for j, im in enumerate(crops(Stain(gain=gain), n=6)):  # the same cells, another stain
            paths.append(str(tmp_path / f"s{s}c{j}.png"))
            slides.append(f"s{s}")
            Image.fromarray(im).save(paths[-1])

    def gap(cells) -> float:  # the slides' mean-colour difference of the sampled cells
        x = cells.permute(0, 2, 3, 1).numpy().astype(float)  # (n, S, S, 3)
        return float(np.abs(x[:6].mean((0, 1, 2)) - x[6:].mean((0, 1, 2))).max())

    plain = sample_cells(paths, 12, 32, "bicubic")
    normed = sample_cells(paths, 12, 32, "bicubic", slides, "od-slide")
    assert normed.shape == plain.shape == (12, 3, 32, 32)
    assert gap(normed) < 0.15 * gap(plain)
    np.testing.assert_array_equal(sample_cells(paths, 12, 32, "bicubic", slides, "none"), plain)

    class BB:
        name, image_size, weights = "b", 32, {"sha256": "ab" * 8}

    assert cache_key(BB(), "openvino", "int8", 300, "od-slide") != cache_key(BB(), "openvino", "int8", 300)
    assert cache_key(BB(), "openvino", "32", 300, "od-slide") == cache_key(BB(), "openvino", "32", 300)
    from mil.extract import stain

    key = cache_key(BB(), "openvino", "int8", 300, "od-slide")
    monkeypatch.setattr(stain, "PIXEL_STEP", 2)  # other slide statistics: other calibration pixels
    assert cache_key(BB(), "openvino", "int8", 300, "od-slide") != key
