"""Pillow drawing: colour scale, placeholders, grids, map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mil.explain import render


def test_colour_scale_ends_and_nan() -> None:
    rgb = render.colours(np.array([0.0, 1.0, np.nan, -3.0, 7.0]))
    assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[1]) == (253, 231, 36)  # viridis ends
    assert tuple(rgb[2]) == render.MISSING_GREY
    assert tuple(rgb[3]) == tuple(rgb[0]) and tuple(rgb[4]) == tuple(rgb[1])  # clipped
    assert np.all(np.diff(render.LUT.astype(int).sum(1)) >= -3)  # brightens along the scale


def test_load_tile_missing_and_unreadable_give_placeholder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = tmp_path / "good.png"
    Image.new("RGB", (10, 20), (0, 200, 0)).save(good)
    for p in (tmp_path / "nope.png", bad, None):
        tile, ok = render.load_tile(p, 48)
        assert not ok and tile.size == (48, 48)
        assert tile.getpixel((2, 24)) == render.MISSING_GREY  # grey, with a red X across
        assert tile.getpixel((10, 10)) == (200, 30, 30)
    tile, ok = render.load_tile(good, 32)
    assert ok and tile.size == (32, 32) and tile.getpixel((16, 16)) == (0, 200, 0)


def test_mosaic_and_map_shapes() -> None:
    tiles = [Image.new("RGB", (10, 10)) for _ in range(7)]
    im = render.mosaic_grid(tiles, np.linspace(0, 1, 7), border=2)
    assert im.size == (3 * 14, 3 * 14)
    assert im.getpixel((0, 0)) == render.colour(0.0) and im.getpixel((14 * 2, 0)) == render.colour(1 / 3)
    m = render.cell_map(np.array([[0, 0], [100, 50], [np.nan, 1]]), np.array([0.0, 1.0, 0.5]), size=200)
    assert m.size == (200, 200)
    assert m.getpixel((180, 105)) == render.colour(1.0)  # (100, 50) -> right edge, middle
