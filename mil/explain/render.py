"""Pillow drawing for attention exports: colour scale, cell tiles, gallery, mosaic, cell map.

Everything here takes plain arrays and PIL images; nothing knows about models or stores.
Colour values are already normalised to [0, 1] (see :func:`mil.heatmap.normalise`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# viridis sampled at 9 points (perceptually uniform, colour-blind safe, prints in grey)
_ANCHORS = np.array([(68, 1, 84), (71, 44, 123), (58, 82, 139), (44, 114, 142), (32, 144, 140),
                     (40, 174, 127), (94, 201, 97), (173, 220, 48), (253, 231, 36)], np.float32)
_X = np.linspace(0.0, 1.0, len(_ANCHORS))
LUT = np.stack([np.interp(np.linspace(0, 1, 256), _X, _ANCHORS[:, c]) for c in range(3)],
               axis=1).round().astype(np.uint8)  # (256, 3)
BG = (255, 255, 255)
INK = (20, 20, 20)
MISSING_GREY = (150, 150, 150)


@functools.lru_cache(maxsize=8)
def font(size: int = 12) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (no system fonts needed)."""
    return ImageFont.load_default(size=size)


def colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (N,) -> RGB uint8 (N, 3); NaN is drawn grey."""
    v = np.asarray(values, np.float64)
    idx = np.clip(np.nan_to_num(v, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.int64)  # (N,)
    out = LUT[idx].copy()  # (N, 3)
    out[np.isnan(v)] = MISSING_GREY
    return out


def colour(value: float) -> tuple[int, int, int]:
    r, g, b = colours(np.array([value]))[0]
    return int(r), int(g), int(b)


def placeholder_tile(size: int) -> Image.Image:
    """A grey tile with a red X and 'missing': a cell image that could not be read."""
    im = Image.new("RGB", (size, size), MISSING_GREY)
    d = ImageDraw.Draw(im)
    w = max(1, size // 24)
    d.line([(0, 0), (size - 1, size - 1)], fill=(200, 30, 30), width=w)
    d.line([(0, size - 1), (size - 1, 0)], fill=(200, 30, 30), width=w)
    if size >= 40:
        f = font(max(8, size // 7))
        d.text((size / 2, size / 2), "missing", fill=(255, 255, 255), font=f, anchor="mm",
               stroke_width=1, stroke_fill=(0, 0, 0))
    return im


def load_tile(path: Path | None, size: int) -> tuple[Image.Image, bool]:
    """The cell image resized to ``size`` px, or a placeholder; returns (tile, ok)."""
    if path is not None:
        try:
            with Image.open(path) as im:
                return im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), True
        except (OSError, ValueError, Image.DecompressionBombError):
            pass
    return placeholder_tile(size), False


def framed(tile: Image.Image, rgb: tuple[int, int, int], border: int) -> Image.Image:
    """The tile inside a solid frame of colour ``rgb``."""
    s = tile.width + 2 * border
    out = Image.new("RGB", (s, s), rgb)
    out.paste(tile, (border, border))
    return out


def text_block(lines: Sequence[str], width: int, size: int = 14, bold_first: bool = True) -> Image.Image:
    """Lines of text, left aligned, on white; the first line larger when ``bold_first``."""
    fonts = [font(size + 4 if (i == 0 and bold_first) else size) for i in range(len(lines))]
    heights = [f.getbbox("Ag")[3] + 6 for f in fonts]
    im = Image.new("RGB", (width, sum(heights) + 8), BG)
    d = ImageDraw.Draw(im)
    y = 4
    for line, f, h in zip(lines, fonts, heights, strict=True):
        d.text((8, y), line, fill=INK, font=f)
        y += h
    return im


def colour_bar(width: int, lo: str, hi: str, label: str, height: int = 16) -> Image.Image:
    """A horizontal colour scale with its end labels and what it measures."""
    f = font(12)
    bar_w = max(60, width - 16)
    im = Image.new("RGB", (width, height + 40), BG)
    ramp = LUT[np.linspace(0, 255, bar_w).astype(np.int64)]  # (W, 3)
    im.paste(Image.fromarray(np.repeat(ramp[None], height, axis=0)), (8, 4))
    d = ImageDraw.Draw(im)
    d.rectangle([8, 4, 8 + bar_w - 1, 4 + height - 1], outline=INK)
    d.text((8, height + 8), lo, fill=INK, font=f)
    d.text((8 + bar_w, height + 8), hi, fill=INK, font=f, anchor="ra")
    d.text((8 + bar_w / 2, height + 8), label, fill=INK, font=f, anchor="ma")
    return im


def stack(parts: Sequence[Image.Image], pad: int = 4) -> Image.Image:
    """Images one below the other, left aligned, on white."""
    w = max(p.width for p in parts)
    out = Image.new("RGB", (w, sum(p.height for p in parts) + pad * (len(parts) - 1)), BG)
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height + pad
    return out


@dataclass
class TileSpec:
    """One cell in a gallery: its image, its colour value in [0, 1] and caption lines."""

    tile: Image.Image
    value: float
    caption: tuple[str, ...]


def tile_grid(specs: Sequence[TileSpec], columns: int, border: int = 5,
              caption_size: int = 11) -> Image.Image:
    """Framed tiles in a grid, each with its caption lines underneath."""
    if not specs:
        return Image.new("RGB", (1, 1), BG)
    size = specs[0].tile.width + 2 * border
    f = font(caption_size)
    line_h = f.getbbox("Ag")[3] + 2
    n_lines = max(len(s.caption) for s in specs)
    cell_w, cell_h = size + 8, size + n_lines * line_h + 8
    cols = min(columns, len(specs))
    rows = math.ceil(len(specs) / cols)
    im = Image.new("RGB", (cols * cell_w + 8, rows * cell_h + 4), BG)
    d = ImageDraw.Draw(im)
    for i, s in enumerate(specs):
        x, y = 8 + (i % cols) * cell_w, 4 + (i // cols) * cell_h
        im.paste(framed(s.tile, colour(s.value), border), (x, y))
        for j, line in enumerate(s.caption):
            d.text((x, y + size + 2 + j * line_h), line, fill=INK, font=f)
    return im


def gallery(title: Sequence[str], sections: Sequence[tuple[str, Sequence[TileSpec]]],
            scale: tuple[str, str, str], columns: int = 8) -> Image.Image:
    """Title lines, then one captioned grid per (heading, tiles) section, then the colour scale."""
    grids = [(h, tile_grid(t, columns)) for h, t in sections if t]
    width = max([g.width for _, g in grids] + [640])
    parts = [text_block(title, width)]
    for heading, grid in grids:
        parts += [text_block([heading], width, size=13, bold_first=False), grid]
    parts.append(colour_bar(min(width, 640), *scale))
    return stack(parts)


def mosaic_grid(tiles: Sequence[Image.Image], values: np.ndarray, border: int) -> Image.Image:
    """Every tile, in the order given (row-major, near-square), framed by its colour."""
    n = len(tiles)
    cols = max(1, math.ceil(math.sqrt(n)))
    size = tiles[0].width + 2 * border if n else 1
    rows = max(1, math.ceil(n / cols))
    im = Image.new("RGB", (cols * size, rows * size), BG)
    rgb = colours(values)
    for i, t in enumerate(tiles):
        c = (int(rgb[i, 0]), int(rgb[i, 1]), int(rgb[i, 2]))
        im.paste(framed(t, c, border), ((i % cols) * size, (i // cols) * size))
    return im


def mosaic_tile_size(n: int, max_width: int = 2400) -> tuple[int, int]:
    """(tile px, border px) so that a near-square mosaic of ``n`` tiles fits ``max_width``."""
    cols = max(1, math.ceil(math.sqrt(n)))
    size = int(np.clip(max_width // cols, 12, 72))
    border = max(1, size // 12)
    return size - 2 * border, border


def cell_map(coords: np.ndarray, values: np.ndarray, size: int = 800) -> Image.Image:
    """Cells as dots at their (x, y) coordinates (y down, as in the slide image), coloured by value.

    ``coords (N, 2)``; high values are drawn last, on top. Non-finite coordinates are skipped.
    """
    xy = np.asarray(coords, np.float64)  # (N, 2)
    ok = np.isfinite(xy).all(axis=1)
    im = Image.new("RGB", (size, size), (245, 245, 245))
    if not ok.any():
        return im
    lo, hi = xy[ok].min(axis=0), xy[ok].max(axis=0)
    span = float(max((hi - lo).max(), 1e-9))
    margin = 20
    scale = (size - 2 * margin) / span
    r = float(np.clip(0.5 * (size - 2 * margin) / math.sqrt(ok.sum()), 2.0, 12.0))
    d = ImageDraw.Draw(im)
    rgb = colours(values)
    order = [i for i in np.argsort(np.nan_to_num(values, nan=-1.0), kind="stable") if ok[i]]
    for i in order:
        x, y = margin + (xy[i] - lo) * scale
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rgb[i]),
                  outline=(60, 60, 60))
    return im
