"""The synthetic AML cohort generator (uses only the base layer).

``canvas`` (shapes as signed distances, stains as optical densities), ``cells`` (one painter per
cell type and class cue), ``cohort`` (slides, CSVs, noisy expert labels), ``montage`` (a labelled
grid), ``config`` and ``cli`` (``mil.synth``).
"""

from mil.synth.config import CLASS_NAMES, SynthConfig, class_names

__all__ = ["CLASS_NAMES", "SynthConfig", "class_names"]
