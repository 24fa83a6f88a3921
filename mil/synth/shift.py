"""How a second cohort differs from the first: the shifts real cohorts show between centres,
scanners and years, applied to the synthetic generator.

* ``stain_hue`` / ``brightness``: one cohort-wide change of the stain, on top of every slide's
  own jitter (a new stain batch or scanner). Hue moves optical density from the blue to the red
  channel (log gain ``+h`` red, ``-h`` blue); brightness scales all optical density by
  ``exp(-b)`` (positive: paler).
* ``confounder``: a stain tint that goes with the class. Slides of class ``k`` get a log gain of
  ``c * direction(k)``; a cohort made with ``-c`` has the same tints against the labels, so a
  model that learnt the colour cue is wrong there (what a real two-cohort dataset showed).
* ``artefacts``: the share of each slide's cells that are smudge (basket) cells, drawn instead of
  non-blasts (about 15% of a real smear's cells).
* ``class_shares``: the class balance of the slides (default: equal shares).
* ``cells_spread``: each slide draws its cell count from ``cells * [1 - s, 1 + s]``.

With every shift at its default the generator writes the same bytes as without this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mil.synth.canvas import Stain

# log-gain directions (red, green, blue): the confounder's tint of class k is cos/sin of 2 pi k / K
_TINT_A = np.array((1.0, 0.0, -1.0)) / math.sqrt(2.0)
_TINT_B = np.array((1.0, -2.0, 1.0)) / math.sqrt(6.0)


@dataclass(frozen=True)
class CohortShift:
    """A cohort-wide stain change and a class-linked tint (see the module docstring)."""

    stain_hue: float = 0.0
    brightness: float = 0.0
    confounder: float = 0.0

    def tint(self, class_index: int, n_classes: int) -> np.ndarray:
        """The log gain (3,) that class ``class_index`` adds to every slide of this cohort."""
        theta = 2.0 * math.pi * class_index / n_classes
        return self.confounder * (math.cos(theta) * _TINT_A + math.sin(theta) * _TINT_B)

    def apply(self, stain: Stain, class_index: int, n_classes: int) -> Stain:
        """``stain`` as this cohort's scanner and staining would show it for the given class."""
        if not (self.stain_hue or self.brightness or self.confounder):
            return stain
        log_gain = np.log(np.asarray(stain.gain)) + self.tint(class_index, n_classes)
        log_gain += np.array((self.stain_hue, 0.0, -self.stain_hue)) - self.brightness
        gain = np.exp(log_gain)
        return replace(stain, gain=(float(gain[0]), float(gain[1]), float(gain[2])))


def cell_counts(cells: int, spread: float, slides: int, seed: int) -> list[int]:
    """Cells per slide: all ``cells`` when ``spread`` is 0, else uniform in ``cells*[1-s, 1+s]``."""
    if spread == 0:
        return [cells] * slides
    rng = np.random.default_rng([seed, 4])
    lo, hi = max(1, round(cells * (1 - spread))), max(1, round(cells * (1 + spread)))
    return rng.integers(lo, hi + 1, slides).tolist()


def artefact_cells(types: list[str], share: float, rng: np.random.Generator) -> list[str]:
    """``types`` with round(share * n) non-blast cells (as many as there are) made smudge cells."""
    if share == 0:
        return types
    others = [i for i, t in enumerate(types) if t != "blast"]
    k = min(round(share * len(types)), len(others))
    chosen = set(rng.choice(others, k, replace=False).tolist()) if k else set()
    return ["smudge" if i in chosen else t for i, t in enumerate(types)]
