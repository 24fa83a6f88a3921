"""Drawing primitives for the synthetic cohort: shapes as signed distances, stains as densities.

Geometry is in normalised units: a crop spans [-1, 1] on both axes, so a cell drawn at 64, 128
or 224 px looks the same. A signed distance ``d`` (negative inside) becomes an anti-aliased
coverage with :meth:`Canvas.alpha`. Colours are composited in optical density (OD = -log T, the
way stains absorb light), which makes per-slide stain jitter a simple per-channel gain.
Textures (chromatin, granules, noise) are cropped from a fixed, seeded bank of periodic tiles, so
drawing a cell costs a few dozen whole-image numpy operations and no per-granule loops.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

BANK_SEED = 20240601  # the texture bank is part of the generator, not of a cohort


def to_od(rgb: tuple[int, int, int]) -> np.ndarray:
    """RGB (0-255) as seen on a bright-field slide -> optical density (3,)."""
    return (-np.log(np.asarray(rgb, np.float32) / 255.0)).astype(np.float32)


@dataclass(frozen=True)
class Stain:
    """One slide's staining and imaging: OD gain per channel, background, focus, sensor noise."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background: tuple[int, int, int] = (238, 226, 230)
    blur: float = 0.6  # Gaussian radius in pixels at 128 px
    noise: float = 0.02  # OD units


def draw_stain(rng: np.random.Generator) -> Stain:
    """A random slide stain; drawn from the slide's own stream, never from its class."""
    gain = np.exp(rng.normal(0.0, 0.10, 3)) * rng.uniform(0.85, 1.15)
    bg = np.clip(np.array((238, 226, 230)) + rng.normal(0.0, 4.0, 3), 205, 250)
    return Stain(
        gain=(float(gain[0]), float(gain[1]), float(gain[2])),
        background=(int(bg[0]), int(bg[1]), int(bg[2])),
        blur=float(rng.uniform(0.3, 0.9)),
        noise=float(rng.uniform(0.01, 0.03)),
    )


def _blur_periodic(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with wrap-around (FFT), so bank tiles stay seamless."""
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.rfftfreq(a.shape[1])[None, :]
    kernel = np.exp(-2.0 * (math.pi * sigma) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(a) * kernel, s=a.shape).astype(np.float32)


@functools.lru_cache(maxsize=4)
def texture_bank(size: int) -> dict[str, np.ndarray]:
    """Periodic (2*size)^2 tiles: smooth noises (zero mean, unit std) and granule maps (0..1)."""
    rng = np.random.default_rng(BANK_SEED)
    side = 2 * size
    scale = size / 128.0  # bank features are specified in pixels at 128 px

    def smooth(sigma: float) -> np.ndarray:
        a = _blur_periodic(rng.standard_normal((side, side)), max(sigma * scale, 0.3))
        return ((a - a.mean()) / a.std()).astype(np.float32)

    def spots(radius: float, per_px: float) -> np.ndarray:
        imp = np.zeros((side, side), np.float32)
        idx = rng.integers(0, side, (int(per_px * 256 * 256), 2))
        np.add.at(imp, (idx[:, 0], idx[:, 1]), 1.0)
        sig = max(radius * scale / 1.18, 0.35)
        v = _blur_periodic(imp, sig) * (2 * math.pi * sig**2)
        return np.clip((v - 0.3) / 0.4, 0.0, 1.0).astype(np.float32)

    return {
        "white": rng.standard_normal((side, side)).astype(np.float32),
        "grain": smooth(0.9),
        "clump": smooth(2.2),
        "blotch": smooth(9.0),
        "fine_gran": spots(0.9, 0.030),
        "coarse_gran": spots(2.0, 0.045),
        "azuro": spots(1.9, 0.010),
    }


def _norm(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.sqrt(dx * dx + dy * dy)  # much faster than np.hypot


def circle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return _norm(x - cx, y - cy) - r


def disc_distances(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Distance of every pixel to each of k centres, (k, H, W)."""
    cx, cy = cx.astype(np.float32), cy.astype(np.float32)  # float64 would upcast the images
    return _norm(x[None] - cx[:, None, None], y[None] - cy[:, None, None])


def discs(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Union of k discs (vectorised over k)."""
    return (disc_distances(x, y, cx, cy) - r.astype(np.float32)[:, None, None]).min(axis=0)


def ellipse(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float
) -> np.ndarray:
    """Approximate signed distance of an ellipse with semi-axes a, b rotated by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = (y - cy) * c - (x - cx) * s
    return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)


def capsule(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float], r: float) -> np.ndarray:
    """Signed distance of a rounded segment p-q of radius r (rods, filaments, clefts)."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    px, py = x - p[0], y - p[1]
    h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return _norm(px - h * dx, py - h * dy) - r


class Canvas:
    """An optical-density image being painted, with pixel-centre coordinates in [-1, 1].

    :meth:`window` returns a Canvas over a sub-square that shares the pixels: shapes are drawn in
    the window around them only, which is what makes drawing cheap.
    """

    def __init__(self, size: int, stain: Stain) -> None:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        self.size = size
        self.x = c[None, :]  # (1, W)
        self.y = c[:, None]  # (H, 1)
        self.pixel = 2.0 / size  # one pixel in normalised units
        self.stain = stain
        self.od = np.empty((3, size, size), np.float32)  # (3, H, W): channel-first is faster
        self.od[:] = to_od(stain.background)[:, None, None]

    def window(self, cx: float, cy: float, half: float) -> Canvas:
        """A view of the square of half-width ``half`` around (cx, cy), clipped to the image."""
        n = self.x.shape[1]
        x0, x1 = (int(np.clip(np.floor(v / self.pixel + n / 2 + k), 0, n)) for v, k in ((cx - half, -1), (cx + half, 2)))
        n = self.y.shape[0]
        y0, y1 = (int(np.clip(np.floor(v / self.pixel + n / 2 + k), 0, n)) for v, k in ((cy - half, -1), (cy + half, 2)))
        w = object.__new__(Canvas)
        w.size, w.pixel, w.stain = self.size, self.pixel, self.stain
        w.x, w.y = self.x[:, x0:x1], self.y[y0:y1]
        w.od = self.od[:, y0:y1, x0:x1]
        return w

    def alpha(self, d: np.ndarray, soft: float = 1.0) -> np.ndarray:
        """Coverage of the shape ``d < 0``, with an edge ``soft`` pixels wide."""
        return np.clip(0.5 - d / (self.pixel * soft), 0.0, 1.0)

    def texture(self, rng: np.random.Generator, name: str) -> np.ndarray:
        """A random crop (offset + flips) of a bank tile, shaped like this canvas (H, W)."""
        tile = texture_bank(self.size)[name]
        h, w = self.y.shape[0], self.x.shape[1]
        oy, ox = rng.integers(0, tile.shape[0] - self.size, 2)
        flip = int(rng.integers(4))
        crop = tile[oy : oy + h, ox : ox + w]
        return crop[:: 1 - 2 * (flip & 1), :: 1 - 2 * (flip >> 1)]

    def rough(self, rng: np.random.Generator, amp: float) -> np.ndarray:
        """Smooth random offsets to add to a distance: irregular outlines at no extra cost."""
        return amp * self.texture(rng, "blotch")

    def paint(self, alpha: np.ndarray, od: np.ndarray, tex: np.ndarray | None = None, amp: float = 0.0) -> None:
        """Lay a layer of colour ``od`` (3,) over the image with coverage ``alpha`` (H, W);
        ``tex`` modulates the layer's density by ``1 + amp * tex``."""
        col = od[:, None, None]
        layer = col if tex is None else col * np.maximum(1.0 + amp * tex, 0.0)[None]
        self.od += alpha[None] * (layer - self.od)

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        """Stain gain, sensor noise, focus blur -> RGB uint8 (H, W, 3)."""
        st = self.stain
        od = self.od * np.asarray(st.gain, np.float32)[:, None, None]
        for ch in range(3):
            od[ch] += st.noise * self.texture(rng, "white")
        sigma = st.blur * rng.uniform(0.7, 1.3) * self.size / 128.0
        od = _blur3(od, min(0.5 * sigma * sigma, 0.45))
        rgb = np.clip(255.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0))  # (H, W, 3)


def _blur3(a: np.ndarray, w: float) -> np.ndarray:
    """Defocus: one [w, 1-2w, w] pass along each image axis of (3, H, W) (sigma^2 = 2w px^2)."""
    b = a.copy()
    b[:, 1:-1] = w * (a[:, :-2] + a[:, 2:]) + (1 - 2 * w) * a[:, 1:-1]
    c = b.copy()
    c[:, :, 1:-1] = w * (b[:, :, :-2] + b[:, :, 2:]) + (1 - 2 * w) * b[:, :, 1:-1]
    return c
