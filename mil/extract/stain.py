"""Stain normalisation of cell crops before the backbone.

``od-slide``: a stain batch scales how much light each stain absorbs (Beer-Lambert), i.e. the
optical density OD = -log(I / 255) of each colour channel. One gain per channel and slide maps
the slide's mean OD to the reference's: a per-slide grey world in OD space (a diagonal form of
Macenko's stain-concentration matching that small single-cell crops estimate stably).

``reinhard`` / ``reinhard-slide``: Reinhard et al. (2001) colour transfer. Each crop's colours are mapped in the decorrelated l-alpha-beta space (log LMS cone responses)
so that their mean and standard deviation per channel match a reference: ``reinhard`` takes the
statistics of the crop itself; ``reinhard-slide`` pools them over the slide's crops (a slide is
one staining run: one transform per slide keeps the differences between its cells, which a
per-crop transform partly removes, e.g. a blast's salmon cytoplasm). The reference is fixed
(:data:`DEFAULT_REFERENCE`, real May-Gruenwald-Giemsa crops), so every cohort maps to the same
colours; the store records mode and reference, and features made otherwise count as different.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

StainNorm = Literal["none", "od-slide", "reinhard", "reinhard-slide"]
STAIN_NORMS: tuple[str, ...] = ("none", "od-slide", "reinhard", "reinhard-slide")
SLIDE_MODES = ("od-slide", "reinhard-slide")

_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]],
                    np.float32)
_LMS2RGB = np.linalg.inv(_RGB2LMS).astype(np.float32)
_LOG2LAB = (np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)])
            @ np.array([[1, 1, 1], [1, 1, -2], [1, -1, 0]])).astype(np.float32)
_LAB2LOG = np.linalg.inv(_LOG2LAB).astype(np.float32)
_EPS = 1.0 / 255.0

# mean and std per l-alpha-beta channel over every 4th pixel of the 1,150 Matek cells
# (../shared/data/matek_lmu, CC BY 3.0; recomputed by tests/test_stain.py when present).
# Summed in float64: the float32 sums these were first measured with were 2-3% off
# (0.2444, 0.6213, 0.1972 for the OD), so stores made with those references differ.
DEFAULT_REFERENCE: tuple[tuple[float, float, float], tuple[float, float, float]] = (
    (-0.2476, -0.0566, 0.0107), (0.3025, 0.1366, 0.0220))
# mean optical density (red, green, blue) over every 4th pixel of the same 1,150 cells
DEFAULT_OD: tuple[float, float, float] = (0.2501, 0.6354, 0.1973)

SLIDE_SAMPLE = 64  # crops per slide whose pixels give the slide's statistics
# every 4th pixel each way of a sample crop, as the references were measured (the level counts
# of a 400 px crop: 0.19 ms against 0.50 at every 2nd)
PIXEL_STEP = 4
# Crops are normalised after the resize to the backbone's size (the statistics still come from
# the full-size sample crops). Stores made before normalised the full-size crop, which gives
# other pixels; their record lacks this mark, so they are refused for mixing.
APPLIED = "after=resize"


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 l-alpha-beta (..., 3)."""
    x = np.maximum(rgb.astype(np.float32) / 255.0, _EPS)
    return np.log10(np.maximum(x @ _RGB2LMS.T, _EPS)) @ _LOG2LAB.T


def from_lab(lab: np.ndarray) -> np.ndarray:
    """float32 l-alpha-beta (..., 3) -> uint8 RGB (..., 3), clipped."""
    rgb = (10.0 ** (lab @ _LAB2LOG.T)) @ _LMS2RGB.T
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_od(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 optical density (..., 3)."""
    return -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)


def od_histogram(rgb: np.ndarray, step: int = 1) -> np.ndarray:
    """Counts (768,) of each grey level per channel (red, green, blue) over every ``step``-th
    pixel of a uint8 RGB (H, W, 3) crop: the statistic a slide's mean OD is pooled from."""
    from PIL import Image

    sub = np.ascontiguousarray(rgb[::step, ::step])  # (h, w, 3)
    return np.asarray(Image.fromarray(sub, "RGB").histogram(), np.int64)


def od_from_histogram(hist: np.ndarray) -> np.ndarray:
    """Mean optical density (3,) from per-channel level counts (768,); summed in float64."""
    od = to_od(np.arange(256, dtype=np.uint8)).astype(np.float64)  # (256,) OD of each level
    counts = np.asarray(hist, np.int64).reshape(3, 256)  # (3, 256)
    mean = (counts * od).sum(1) / np.maximum(counts.sum(1), 1)  # (3,)
    return np.maximum(mean.astype(np.float32), 1e-3)


def od_stats(images: Sequence[np.ndarray], step: int = 1) -> np.ndarray:
    """Mean optical density (3,) over every ``step``-th pixel of ``images`` (from their
    histograms: OD is a function of the grey level, so no pixel is converted)."""
    return od_from_histogram(sum((od_histogram(im, step) for im in images), np.zeros(768, np.int64)))


def od_table(mean_od: np.ndarray, reference: Sequence[float] = DEFAULT_OD) -> list[int]:
    """The OD gain as a 768-entry lookup table (red, green, blue; Pillow's ``point`` layout):
    each channel's OD scaled so that ``mean_od`` becomes ``reference``."""
    gain = np.asarray(reference, np.float32) / mean_od  # (3,)
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # (256, 3)
    lut = np.clip(255.0 * np.exp(-to_od(levels) * gain) + 0.5, 0, 255).astype(np.uint8)  # (256, 3)
    return lut.T.reshape(-1).tolist()


def od_transfer(rgb: np.ndarray, mean_od: np.ndarray, reference: Sequence[float] = DEFAULT_OD) -> np.ndarray:
    """uint8 RGB (H, W, 3) with each channel's OD scaled so that ``mean_od`` becomes ``reference``.

    A per-channel map of the 256 grey levels, applied as a lookup table (7x faster than the
    arithmetic on a 400 px crop, the same pixels)."""
    return apply_table(rgb, od_table(mean_od, reference))


def apply_table(rgb: np.ndarray, table: list[int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) through a 768-entry per-channel lookup table."""
    from PIL import Image

    return np.array(Image.fromarray(np.ascontiguousarray(rgb), "RGB").point(table))


def lab_stats(images: Sequence[np.ndarray], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (3,) per l-alpha-beta channel over every ``step``-th pixel of ``images``."""
    lab = np.concatenate([to_lab(im[::step, ::step]).reshape(-1, 3) for im in images])  # (P, 3)
    mean, std = lab.mean(0, dtype=np.float64), lab.std(0, dtype=np.float64)  # float32 sums drift
    return mean.astype(np.float32), np.maximum(std, 1e-4).astype(np.float32)


def transfer(rgb: np.ndarray, stats: tuple[np.ndarray, np.ndarray],
             reference: tuple[Sequence[float], Sequence[float]] = DEFAULT_REFERENCE) -> np.ndarray:
    """uint8 RGB (H, W, 3) whose l-alpha-beta ``stats`` (mean, std) become ``reference``'s."""
    mean, std = stats
    ref_mean, ref_std = (np.asarray(v, np.float32) for v in reference)
    lab = (to_lab(rgb) - mean) * (ref_std / std) + ref_mean  # (H, W, 3)
    return from_lab(lab.astype(np.float32))


class StainNormaliser:
    """Normalise decoded crops (``uint8 (H, W, 3)`` tensors) of a flat list of cells.

    ``slide_of[i]`` names cell i's slide. The per-slide modes need each slide's statistics
    before its first crop: :meth:`missing` names the slides of a batch still without them,
    :meth:`sample` gives the cells to measure, :meth:`partial` and :meth:`fit_partials` (or
    :meth:`fit_slides`) take their decoded crops (the extractor keeps those crops for the main
    pass, so no crop is decoded twice).
    """

    def __init__(self, mode: str, reference: tuple[Sequence[float], Sequence[float]] = DEFAULT_REFERENCE,
                 slide_of: Sequence[str] = ()) -> None:
        if mode not in STAIN_NORMS[1:]:
            raise ValueError(f"unknown stain normalisation {mode!r}")
        self.mode, self.reference, self.slide_of = mode, reference, list(slide_of)
        self.slide_stats: dict[str, Any] = {}
        self.tables: dict[str, list[int]] = {}
        self.members: dict[str, list[int]] = {}
        for i, sid in enumerate(self.slide_of):
            self.members.setdefault(sid, []).append(i)

    def missing(self, indices: Sequence[int]) -> list[str]:
        """Slides of cells ``indices`` whose statistics are still to be measured (in order)."""
        if self.mode not in SLIDE_MODES:
            return []
        return list(dict.fromkeys(self.slide_of[i] for i in indices
                                  if self.slide_of[i] not in self.slide_stats))

    def sample(self, slide: str) -> list[int]:
        """Up to :data:`SLIDE_SAMPLE` evenly spaced cells of ``slide`` (flat indices)."""
        cells = self.members[slide]
        return [cells[j] for j in sample_indices(len(cells))]

    def partial(self, rgb: np.ndarray) -> Any:
        """One sample crop's share of its slide's statistics (computed on the decoding
        threads): level counts for ``od-slide``, the crop itself for ``reinhard-slide``."""
        return od_histogram(rgb, step=PIXEL_STEP) if self.mode == "od-slide" else rgb

    def fit_partials(self, slide: str, parts: list[Any]) -> None:
        """A slide's statistics from its sample crops' :meth:`partial`; a slide with no
        readable crop gets a white one's."""
        parts = parts or [self.partial(np.full((2, 2, 3), 255, np.uint8))]
        if self.mode == "od-slide":
            self.slide_stats[slide] = od_from_histogram(sum(parts, np.zeros(768, np.int64)))
            self.tables[slide] = od_table(self.slide_stats[slide])
        else:
            self.slide_stats[slide] = lab_stats(parts, step=PIXEL_STEP)

    def fit_slides(self, images_of: dict[str, list[np.ndarray]]) -> None:
        """Each slide's statistics from (a sample of) its decoded crops."""
        for sid, images in images_of.items():
            self.fit_partials(sid, [self.partial(im) for im in images])

    def __call__(self, i: int, im: Any) -> Any:
        """Crop ``i`` (a uint8 (H, W, 3) tensor) normalised, as a tensor."""
        import torch

        rgb = im.numpy()
        if self.mode == "od-slide":
            return torch.from_numpy(apply_table(rgb, self.tables[self.slide_of[i]]))
        stats = self.slide_stats[self.slide_of[i]] if self.mode == "reinhard-slide" else lab_stats([rgb])
        return torch.from_numpy(transfer(rgb, stats, self.reference))

    def record(self) -> str:
        """The provenance value: mode, reference numbers, where it acts (:data:`APPLIED`) and,
        for a per-slide mode, how the slide statistics are sampled."""
        stats = f";stats={SLIDE_SAMPLE}crops,step{PIXEL_STEP}" if self.mode in SLIDE_MODES else ""
        if self.mode == "od-slide":
            return f"od-slide(od={','.join(f'{v:.4f}' for v in DEFAULT_OD)};{APPLIED}{stats})"
        mean, std = (",".join(f"{v:.4f}" for v in vals) for vals in self.reference)
        return f"{self.mode}(mean={mean};std={std};{APPLIED}{stats})"


def stain_record(mode: str) -> str:
    """The store's ``stain_norm`` provenance value of ``mode``: ``none``, or
    :meth:`StainNormaliser.record`."""
    return "none" if mode == "none" else StainNormaliser(mode).record()


def build_normaliser(mode: str, cells: Sequence[Any]) -> StainNormaliser | None:
    """The normaliser of ``mode`` for ``cells`` (objects with ``slide_id``); None for none.
    Per-slide statistics are measured during extraction (:class:`mil.extract.images.CellImages`)."""
    if mode == "none":
        return None
    return StainNormaliser(mode, slide_of=[c.slide_id for c in cells])


def sample_indices(n: int, k: int = SLIDE_SAMPLE) -> list[int]:
    """``min(n, k)`` evenly spaced indices of ``range(n)``, first and last included
    (deterministic): every index when ``n <= k``."""
    m = min(n, k)
    return sorted({round(j * (n - 1) / max(m - 1, 1)) for j in range(m)})
