"""Options of ``python -m mil.synth`` and the class names (no numpy, no drawing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mil.errors import CliError

CLASS_NAMES = ("PML-RARA", "NPM1", "CBFB-MYH11", "RUNX1-RUNX1T1", "KMT2A-MLLT3", "CEBPA")
NON_BLAST_MIX = {"neutrophil": 0.45, "lymphocyte": 0.30, "monocyte": 0.15, "eosinophil": 0.10}
# Each slide draws its own non-blast mix from Dirichlet(MIX_CONCENTRATION * NON_BLAST_MIX): marrow
# composition varies between patients, and since eosinophil granules, monocyte vacuoles and
# indented nuclei resemble the blast cues, a mean over all cells becomes a poor class summary.
MIX_CONCENTRATION = 6.0


@dataclass
class SynthConfig:
    """Options of ``python -m mil.synth`` (and keywords of :func:`make_cohort`)."""

    slides: int = field(default=40, metadata={"help": "number of slides"})
    cells: int = field(default=64, metadata={"help": "cells per slide"})
    classes: int = field(default=4, metadata={"help": f"genetic classes K (2-{len(CLASS_NAMES)})"})
    noise: float = field(default=0.2, metadata={"help": "share of expert cell labels flipped"})
    labelled: float = field(default=0.3, metadata={"help": "share of cells with an expert label"})
    image_size: int = field(default=128, metadata={"help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "random seed (same seed, same bytes)"})
    workers: int = field(default=1, metadata={"help": "processes drawing slides in parallel"})
    blast_min: float = field(default=0.15, metadata={"help": "lowest slide blast share"})
    blast_max: float = field(default=0.85, metadata={"help": "highest slide blast share"})
    cue_min: float = field(default=0.5, metadata={"help": "lowest share of blasts showing the cue"})
    cue_max: float = field(default=0.7, metadata={"help": "highest share of blasts showing the cue"})
    paired: float = field(default=0.2, metadata={"help": "share of patients with two slides"})
    class_shares: list[float] | None = field(default=None, metadata={
        "help": "slide share of each class, comma-separated (default: equal)", "metavar": "P,P,..."})
    cells_spread: float = field(default=0.0, metadata={
        "help": "cells per slide drawn from cells*[1-s, 1+s] (0: all slides have --cells)"})
    stain_hue: float = field(default=0.0, metadata={
        "help": "cohort-wide stain hue shift (log OD gain +h red, -h blue; e.g. 0.15)"})
    brightness: float = field(default=0.0, metadata={
        "help": "cohort-wide brightness shift (OD scaled by exp(-b); positive: paler)"})
    confounder: float = field(default=0.0, metadata={
        "help": "class-linked stain tint of this strength (negative: the same tints against the "
                "labels, for a second cohort)"})
    artefacts: float = field(default=0.0, metadata={
        "help": "share of each slide's cells that are smudge cells (replacing non-blasts)"})
    montage: Path | None = field(default=None, metadata={"help": "also write a labelled grid PNG"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing cohort in OUT"})

    def validate(self) -> None:
        """Reject impossible values with a one-line :class:`CliError`."""
        checks = [
            (self.slides >= 1, f"--slides must be >= 1, got {self.slides}"),
            (self.cells >= 1, f"--cells must be >= 1, got {self.cells}"),
            (2 <= self.classes <= len(CLASS_NAMES),
             f"--classes must be 2..{len(CLASS_NAMES)}, got {self.classes}"),
            (0.0 <= self.noise <= 1.0, f"--noise must be in [0, 1], got {self.noise}"),
            (0.0 <= self.labelled <= 1.0, f"--labelled must be in [0, 1], got {self.labelled}"),
            (self.image_size >= 16, f"--image-size must be >= 16, got {self.image_size}"),
            (self.workers >= 1, f"--workers must be >= 1, got {self.workers}"),
            (0.0 <= self.blast_min <= self.blast_max <= 1.0,
             f"need 0 <= --blast-min <= --blast-max <= 1, got {self.blast_min}, {self.blast_max}"),
            (0.0 <= self.cue_min <= self.cue_max <= 1.0,
             f"need 0 <= --cue-min <= --cue-max <= 1, got {self.cue_min}, {self.cue_max}"),
            (0.0 <= self.paired <= 1.0, f"--paired must be in [0, 1], got {self.paired}"),
            (0.0 <= self.cells_spread < 1.0, f"--cells-spread must be in [0, 1), got {self.cells_spread}"),
            (0.0 <= self.artefacts < 1.0, f"--artefacts must be in [0, 1), got {self.artefacts}"),
            (abs(self.stain_hue) <= 1.0 and abs(self.brightness) <= 1.0 and abs(self.confounder) <= 1.0,
             "--stain-hue, --brightness and --confounder must lie in [-1, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise CliError(message)
        shares = self.class_shares
        if shares is not None and (len(shares) != self.classes or min(shares) <= 0):
            raise CliError(f"--class-shares needs {self.classes} positive values (one per class), "
                           f"got {','.join(map(str, shares))}")


def class_names(k: int) -> tuple[str, ...]:
    """The first ``k`` class names (each has its own blast cue)."""
    if not 2 <= k <= len(CLASS_NAMES):
        raise CliError(f"--classes must be 2..{len(CLASS_NAMES)}, got {k}")
    return CLASS_NAMES[:k]
