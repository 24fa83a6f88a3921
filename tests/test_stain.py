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
    to_lab,
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
        assert d.attrs["stain_norm"].startswith("od-slide(od=0.2444,0.6213,0.1972)")  # the default
    with open_store(tmp_path / "plain.h5") as a, open_store(tmp_path / "slide.h5") as b:
        assert a.attrs["stain_norm"] == "none"
        assert b.attrs["stain_norm"].startswith("reinhard-slide(mean=-0.2413")
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
