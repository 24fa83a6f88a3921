"""The synthetic cells: palette, one painter per cell type, one per genetic class cue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mil.synth.artefacts import ARTEFACT_TYPES, paint_smudge
from mil.synth.canvas import (
    Canvas,
    Stain,
    _norm,
    capsule,
    circle,
    discs,
    ellipse,
    to_od,
)

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
    "smudge": paint_smudge,
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
    if cell_type not in CELL_TYPES + ARTEFACT_TYPES:
        raise ValueError(f"unknown cell type {cell_type!r}; expected one of {CELL_TYPES + ARTEFACT_TYPES}")
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
