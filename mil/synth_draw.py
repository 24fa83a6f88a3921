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


# ---------------------------------------------------------------------------------------------
# cells: palette, one painter per cell type, one painter per genetic class cue

CELL_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "blast")
NON_BLAST_TYPES = CELL_TYPES[:4]
CUES = ("PML-RARA", "NPM1", "CBFB-MYH11", "RUNX1-RUNX1T1", "KMT2A-MLLT3", "CEBPA")

OD = {
    name: to_od(rgb)
    for name, rgb in {
        "rbc": (216, 146, 152),
        "pallor": (236, 206, 208),
        "nucleus": (84, 42, 116),
        "nucleus_mono": (112, 72, 150),
        "nucleus_blast": (126, 84, 166),
        "nucleolus": (190, 178, 222),
        "cyto_neutro": (228, 198, 214),
        "gran_neutro": (176, 118, 166),
        "cyto_lympho": (146, 176, 228),
        "cyto_mono": (170, 174, 206),
        "cyto_eo": (228, 208, 204),
        "gran_eo": (228, 110, 58),
        "cyto_blast": (104, 130, 204),
        "vacuole": (244, 240, 246),
        "auer": (146, 28, 92),
        "azuro": (106, 26, 86),
        "salmon": (234, 150, 132),
        "eo_dark": (92, 40, 96),
    }.items()
}


@dataclass
class Frame:
    """Where a white cell sits: centre, radius, orientation, outline coverage and distance."""

    cx: float
    cy: float
    r: float
    angle: float
    d: np.ndarray
    a: np.ndarray


def _frame(
    cv: Canvas, rng: np.random.Generator, r_lo: float, r_hi: float, amp: float
) -> tuple[Frame, Canvas]:
    """Place a white cell; returns it and the window of the canvas that holds it."""
    cx, cy = (float(v) for v in rng.uniform(-0.08, 0.08, 2))
    r, angle = rng.uniform(r_lo, r_hi), rng.uniform(0, 2 * math.pi)
    cv = cv.window(cx, cy, r * (1.0 + 4 * amp) + 2 * cv.pixel)
    d = ellipse(cv.x, cv.y, cx, cy, r, r * rng.uniform(0.9, 1.0), angle) + cv.rough(rng, amp * r)
    return Frame(cx, cy, r, angle, d, cv.alpha(d)), cv


def paint_rbcs(cv: Canvas, rng: np.random.Generator) -> None:
    """2-6 red cells around the crop, many cut by its border, each with a pale centre."""
    n = int(rng.integers(2, 7))
    th, dist = rng.uniform(0, 2 * math.pi, n), rng.uniform(0.6, 1.25, n)
    cx, cy, r = dist * np.cos(th), dist * np.sin(th), rng.uniform(0.24, 0.32, n)
    soft = 6.0 * cv.size / 128
    for i in range(n):
        w = cv.window(float(cx[i]), float(cy[i]), float(r[i]) + 2 * cv.pixel)
        if w.od.size == 0:
            continue
        dist = _norm(w.x - float(cx[i]), w.y - float(cy[i]))
        w.paint(w.alpha(dist - float(r[i])), OD["rbc"], w.texture(rng, "blotch"), 0.1)
        w.paint(0.6 * w.alpha(dist - 0.45 * float(r[i]), soft=soft), OD["pallor"])


def _paint_neutrophil(cv: Canvas, rng: np.random.Generator) -> None:
    f, cv = _frame(cv, rng, 0.40, 0.48, 0.03)
    cv.paint(f.a, OD["cyto_neutro"], cv.texture(rng, "blotch"), 0.15)
    cv.paint(0.7 * f.a * cv.texture(rng, "fine_gran"), OD["gran_neutro"])
    n = int(rng.integers(3, 5))
    th = rng.uniform(0, 2 * math.pi) + np.linspace(0, rng.uniform(2.4, 3.8), n) + rng.normal(0, 0.15, n)
    lx, ly = f.cx + 0.5 * f.r * np.cos(th), f.cy + 0.5 * f.r * np.sin(th)
    d = discs(cv.x, cv.y, lx, ly, f.r * rng.uniform(0.22, 0.29, n))
    for i in range(n - 1):
        p, q = (float(lx[i]), float(ly[i])), (float(lx[i + 1]), float(ly[i + 1]))
        d = np.minimum(d, capsule(cv.x, cv.y, p, q, 0.05 * f.r))
    cv.paint(cv.alpha(d), OD["nucleus"], cv.texture(rng, "clump"), 0.35)


def _paint_lymphocyte(cv: Canvas, rng: np.random.Generator) -> None:
    f, cv = _frame(cv, rng, 0.28, 0.36, 0.02)
    cv.paint(f.a, OD["cyto_lympho"], cv.texture(rng, "blotch"), 0.2)
    off, th, rn = f.r * rng.uniform(0.04, 0.14), rng.uniform(0, 2 * math.pi), f.r * rng.uniform(0.78, 0.88)
    d = ellipse(cv.x, cv.y, f.cx + off * math.cos(th), f.cy + off * math.sin(th), rn,
                rn * rng.uniform(0.88, 1.0), f.angle) + cv.rough(rng, 0.04 * rn)
    cv.paint(cv.alpha(d), OD["nucleus"] * 1.15, cv.texture(rng, "clump"), 0.4)


def _paint_monocyte(cv: Canvas, rng: np.random.Generator) -> None:
    f, cv = _frame(cv, rng, 0.55, 0.66, 0.05)
    cv.paint(f.a, OD["cyto_mono"], cv.texture(rng, "blotch"), 0.25)
    cv.paint(0.25 * f.a * cv.texture(rng, "fine_gran"), OD["gran_neutro"])
    k = int(rng.integers(2, 9))
    vr, vt = f.r * np.sqrt(rng.uniform(0.1, 0.7, k)), rng.uniform(0, 2 * math.pi, k)
    vac = discs(cv.x, cv.y, f.cx + vr * np.cos(vt), f.cy + vr * np.sin(vt), rng.uniform(0.02, 0.05, k))
    cv.paint(0.8 * cv.alpha(vac), OD["vacuole"])
    a, b = f.r * rng.uniform(0.58, 0.66), f.r * rng.uniform(0.40, 0.48)
    ncx, ncy, nang = f.cx, f.cy, rng.uniform(0, 2 * math.pi)
    d = ellipse(cv.x, cv.y, ncx, ncy, a, b, nang) + cv.rough(rng, 0.05 * a)
    nx, ny = -math.sin(nang), math.cos(nang)  # the minor axis: where the kidney folds in
    bite = circle(cv.x, cv.y, ncx + nx * b * 1.05, ncy + ny * b * 1.05, b * rng.uniform(0.55, 0.8))
    cv.paint(cv.alpha(np.maximum(d, -bite)), OD["nucleus_mono"], cv.texture(rng, "grain"), 0.3)


def _paint_eosinophil(cv: Canvas, rng: np.random.Generator) -> None:
    f, cv = _frame(cv, rng, 0.44, 0.52, 0.03)
    cv.paint(f.a, OD["cyto_eo"])
    th, sep, rl = rng.uniform(0, 2 * math.pi), f.r * rng.uniform(0.32, 0.42), f.r * rng.uniform(0.25, 0.3)
    p = (f.cx + sep * math.cos(th), f.cy + sep * math.sin(th))
    q = (f.cx - sep * math.cos(th), f.cy - sep * math.sin(th))
    d = np.minimum(np.minimum(circle(cv.x, cv.y, *p, rl), circle(cv.x, cv.y, *q, rl)),
                   capsule(cv.x, cv.y, p, q, 0.06 * f.r))
    na = cv.alpha(d)
    cv.paint(na, OD["nucleus"], cv.texture(rng, "clump"), 0.35)
    cv.paint(f.a * (1.0 - 0.6 * na) * cv.texture(rng, "coarse_gran"), OD["gran_eo"])


@dataclass
class BlastGeometry:
    """A blast's cell and nucleus, and the cytoplasm-rich side where cues are placed."""

    f: Frame
    ncx: float
    ncy: float
    rn: float
    side: float  # direction (radians) from the nucleus towards the widest cytoplasm
    dn: np.ndarray


def _cue_spot(g: BlastGeometry, rng: np.random.Generator) -> tuple[float, float, float]:
    """A point in the middle of the cytoplasm crescent, and the crescent's thickness."""
    th = g.side + rng.normal(0, 0.25)
    inner = math.hypot(g.ncx - g.f.cx, g.ncy - g.f.cy) * math.cos(th - g.side) * -1 + g.rn
    thick = max(g.f.r - inner, 0.05)
    mid = inner + 0.5 * thick
    return g.f.cx + mid * math.cos(th), g.f.cy + mid * math.sin(th), thick


def _cue_pml_rara(cv: Canvas, g: BlastGeometry, rng: np.random.Generator, cyto: np.ndarray) -> None:
    """Auer rods (a bundle of 1-4 thin red-purple rods) and coarse azurophilic granules, painted
    over the nucleus as in hypergranular promyelocytes."""
    cx, cy, _ = _cue_spot(g, rng)
    th = math.atan2(cy - g.f.cy, cx - g.f.cx) + math.pi / 2 + rng.normal(0, 0.3)
    d = np.full(cv.od.shape[1:], np.inf, np.float32)
    for i in range(int(rng.integers(1, 5))):
        half = rng.uniform(0.11, 0.17)
        ox, oy = (i * 0.045 - 0.05) * -math.sin(th), (i * 0.045 - 0.05) * math.cos(th)
        t = th + rng.normal(0, 0.12)
        p = (cx + ox - half * math.cos(t), cy + oy - half * math.sin(t))
        q = (cx + ox + half * math.cos(t), cy + oy + half * math.sin(t))
        d = np.minimum(d, capsule(cv.x, cv.y, p, q, rng.uniform(0.022, 0.03)))
    cv.paint(g.f.a * 0.6 * cv.texture(rng, "azuro"), OD["azuro"])
    cv.paint(0.9 * g.f.a * cv.alpha(d), OD["auer"])


def _cue_cbfb_myh11(cv: Canvas, g: BlastGeometry, rng: np.random.Generator, cyto: np.ndarray) -> None:
    """Abnormal eosinophilic granules: coarse orange and a few dark purple ones."""
    cv.paint(cyto * cv.texture(rng, "coarse_gran"), OD["gran_eo"])
    cv.paint(0.9 * cyto * cv.texture(rng, "azuro"), OD["eo_dark"])


def _cue_runx1(cv: Canvas, g: BlastGeometry, rng: np.random.Generator, cyto: np.ndarray) -> None:
    """A pale perinuclear hof on the cytoplasm-rich side (the salmon tint is set by the caller)."""
    cx, cy, thick = _cue_spot(g, rng)
    hof = circle(cv.x, cv.y, cx, cy, max(0.7 * thick, 0.08))
    cv.paint(0.85 * cyto * cv.alpha(hof, soft=4.0 * cv.size / 128), OD["vacuole"])
    cv.paint(0.6 * cyto * cv.texture(rng, "fine_gran"), OD["salmon"] * 1.6)


def _cue_cebpa(cv: Canvas, g: BlastGeometry, rng: np.random.Generator, cyto: np.ndarray) -> None:
    """Many clear cytoplasmic vacuoles."""
    k = int(rng.integers(6, 13))
    vr, vt = g.f.r * np.sqrt(rng.uniform(0.3, 0.9, k)), rng.uniform(0, 2 * math.pi, k)
    d = discs(cv.x, cv.y, g.f.cx + vr * np.cos(vt), g.f.cy + vr * np.sin(vt), rng.uniform(0.035, 0.06, k))
    cv.paint(0.95 * g.f.a * cv.alpha(d), OD["vacuole"])


def _nuclear_cue(g: BlastGeometry, cv: Canvas, cue: str, rng: np.random.Generator) -> np.ndarray | None:
    """Cues that reshape the nucleus: returns the carved-out region's distance (or None)."""
    if cue == "NPM1":  # cup-like invagination: a pale bite into the nucleus
        th = g.side + rng.normal(0, 0.3)
        r = g.rn * rng.uniform(0.42, 0.52)
        return circle(cv.x, cv.y, g.ncx + 0.8 * g.rn * math.cos(th), g.ncy + 0.8 * g.rn * math.sin(th), r)
    if cue == "KMT2A-MLLT3":  # a deep cleft folding the nucleus
        th = g.side + rng.normal(0, 0.4)
        p = (g.ncx + 1.1 * g.rn * math.cos(th), g.ncy + 1.1 * g.rn * math.sin(th))
        q = (g.ncx + 0.05 * g.rn * math.cos(th), g.ncy + 0.05 * g.rn * math.sin(th))
        return capsule(cv.x, cv.y, p, q, g.rn * rng.uniform(0.08, 0.12))
    return None


OVER_CUES = {"PML-RARA": _cue_pml_rara}  # painted over the nucleus
CYTO_CUES = {  # painted in the cytoplasm, under the nucleus
    "CBFB-MYH11": _cue_cbfb_myh11,
    "RUNX1-RUNX1T1": _cue_runx1,
    "CEBPA": _cue_cebpa,
}


def _paint_blast(cv: Canvas, rng: np.random.Generator, cue: str | None, cue_rng: np.random.Generator) -> None:
    f, cv = _frame(cv, rng, 0.48, 0.60, 0.03)
    side, off, rn = rng.uniform(0, 2 * math.pi), f.r * rng.uniform(0.08, 0.15), f.r * rng.uniform(0.72, 0.8)
    ncx, ncy = f.cx - off * math.cos(side), f.cy - off * math.sin(side)
    dn = ellipse(cv.x, cv.y, ncx, ncy, rn, rn * rng.uniform(0.9, 1.0), rng.uniform(0, 2 * math.pi))
    dn = dn + cv.rough(rng, 0.03 * rn)
    k = int(rng.integers(1, 4))
    nr, nt = rn * np.sqrt(rng.uniform(0, 0.3, k)), rng.uniform(0, 2 * math.pi, k)
    nucleoli = discs(cv.x, cv.y, ncx + nr * np.cos(nt), ncy + nr * np.sin(nt), rn * rng.uniform(0.09, 0.15, k))
    tex_c, tex_n = cv.texture(rng, "blotch"), cv.texture(rng, "grain")
    g = BlastGeometry(f, ncx, ncy, rn, side, dn)
    carve = _nuclear_cue(g, cv, cue, cue_rng) if cue else None
    if carve is not None:
        dn = np.maximum(dn, -carve)
    cyto_od = 0.6 * OD["salmon"] + 0.4 * OD["cyto_blast"] if cue == "RUNX1-RUNX1T1" else OD["cyto_blast"]
    if cue == "KMT2A-MLLT3":
        cyto_od = OD["cyto_mono"]
    cv.paint(f.a, cyto_od, tex_c, 0.2)
    na = cv.alpha(dn)
    if cue in CYTO_CUES:
        CYTO_CUES[cue](cv, g, cue_rng, f.a * (1.0 - na))
    if carve is not None and cue == "NPM1":
        cv.paint(0.8 * f.a * cv.alpha(np.maximum(g.dn, carve), soft=2.0), OD["vacuole"])
    cv.paint(na, OD["nucleus_blast"], tex_n, 0.18)
    cv.paint(0.9 * na * cv.alpha(nucleoli, soft=1.5), OD["nucleolus"])
    if cue in OVER_CUES:
        OVER_CUES[cue](cv, g, cue_rng, f.a * (1.0 - na))


PAINTERS = {
    "neutrophil": _paint_neutrophil,
    "lymphocyte": _paint_lymphocyte,
    "monocyte": _paint_monocyte,
    "eosinophil": _paint_eosinophil,
}


def render_cell(
    rng: np.random.Generator,
    cell_type: str,
    *,
    class_name: str | None = None,
    shows_cue: bool = False,
    size: int = 128,
    stain: Stain | None = None,
) -> np.ndarray:
    """One cell image, RGB uint8 (size, size, 3).

    ``class_name`` matters only for a blast with ``shows_cue``; every other cell ignores it, so
    non-blasts (and cue-less blasts) carry no class signal. The cue is drawn from its own stream
    (seeded from ``rng`` first thing), so a blast with and without its cue shares everything else.
    """
    if cell_type not in CELL_TYPES:
        raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES}")
    cue = class_name if (cell_type == "blast" and shows_cue) else None
    if cue is not None and cue not in CUES:
        raise ValueError(f"unknown class cue {cue!r}; expected one of {CUES}")
    cue_rng = np.random.default_rng(int(rng.integers(2**62)))
    cv = Canvas(size, stain or Stain())
    paint_rbcs(cv, rng)
    if cell_type == "blast":
        _paint_blast(cv, rng, cue, cue_rng)
    else:
        PAINTERS[cell_type](cv, rng)
    return cv.finish(rng)
