"""Artefact cells of a real smear: smudge (basket) cells, ruptured nuclei without cytoplasm."""

from __future__ import annotations

import math

import numpy as np

from mil.synth.canvas import Canvas, capsule, ellipse, to_od

ARTEFACT_TYPES = ("smudge",)
_SMUDGE = to_od((132, 92, 164))  # pale, washed-out chromatin


def paint_smudge(cv: Canvas, rng: np.random.Generator) -> None:
    """A large, pale, ragged chromatin smear with a few strands pulled out of it."""
    cx, cy = (float(v) for v in rng.uniform(-0.15, 0.15, 2))
    r, angle = float(rng.uniform(0.35, 0.6)), float(rng.uniform(0, 2 * math.pi))
    w = cv.window(cx, cy, 1.9 * r + 2 * cv.pixel)
    d = ellipse(w.x, w.y, cx, cy, r * rng.uniform(1.0, 1.5), r * rng.uniform(0.6, 0.9), angle)
    d = d + w.rough(rng, 0.35 * r)
    w.paint(0.8 * w.alpha(d, soft=6.0 * cv.size / 128), _SMUDGE * rng.uniform(0.6, 1.0),
            w.texture(rng, "blotch"), 0.4)
    for th in rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))).tolist():
        q = (cx + 1.7 * r * math.cos(th), cy + 1.7 * r * math.sin(th))
        w.paint(0.5 * w.alpha(capsule(w.x, w.y, (cx, cy), q, 0.02)), _SMUDGE * 0.7)
