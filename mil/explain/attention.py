"""Attention maths for explanations: colour scales, within-slide percentiles and ranks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mil.errors import CliError

NORMS = {
    "rank": ("0th pct", "100th pct", "attention percentile within the slide (norm: rank)"),
    "minmax": ("slide min", "slide max", "attention, min-max within the slide (norm: minmax)"),
    "raw": ("0", "1", "raw attention weight, fixed 0-1 scale (norm: raw)"),
}


def normalise_attention(attn: np.ndarray, mode: str) -> np.ndarray:
    """Attention (N,) -> colour values in [0, 1].

    ``rank``: percentile / 100, ties sharing their mean rank (all equal -> 0.5);
    ``minmax``: (a - min) / (max - min) (constant -> 0.5); ``raw``: the weight itself, clipped.
    """
    a = np.asarray(attn, np.float64)
    if mode == "rank":
        return percentiles(a) / 100.0
    if mode == "minmax":
        if a.size == 0 or np.ptp(a) <= 1e-12 * max(1.0, float(np.abs(a).max())):
            return np.full_like(a, 0.5)
        return (a - a.min()) / np.ptp(a)
    if mode == "raw":
        return np.clip(a, 0.0, 1.0)
    raise CliError(f"unknown --norm '{mode}'; choose one of {', '.join(NORMS)}")


def percentiles(a: np.ndarray) -> np.ndarray:
    """Within-bag percentile (0-100) of each value; ties get the mean of their ranks."""
    n = len(a)
    if n <= 1:
        return np.full(n, 100.0)
    s = np.sort(a)
    below = np.searchsorted(s, a, side="left")  # cells with a smaller value
    ties = np.searchsorted(s, a, side="right") - below  # cells with this value (>= 1)
    return 100.0 * (below + (ties - 1) / 2.0) / (n - 1)


def ranks(a: np.ndarray) -> np.ndarray:
    """1 = highest attention; ties in store order."""
    order = np.argsort(-np.asarray(a, np.float64), kind="stable")
    out = np.empty(len(a), np.int64)
    out[order] = np.arange(1, len(a) + 1)
    return out


@dataclass
class SlideAttention:
    """What the export needs to know about one slide (all plain arrays)."""

    slide_id: str
    classes: list[str]
    probs: np.ndarray  # (C,) ensemble class probabilities
    attention: np.ndarray  # (N, K) ensemble attention; K = C (multi-branch) or 1
    cell_ids: list[str]
    paths: list[str]  # relative to the source root (or absolute)
    truth: str | None = None
    coords: np.ndarray | None = None  # (N, 2)
    blast_prob: np.ndarray | None = None  # (N,)
    occlusion: np.ndarray | None = None  # (N,) p_full - p_without for the predicted class
    models: str = ""  # which models made probs and attention (stated on the images)
    call: int | None = None  # the run's decision (None: the most probable class)
    explains: str = ""  # set: attention[:, 0] is explained, with this sentence (a target's branch)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs)) if self.call is None else self.call

    def explained(self) -> tuple[np.ndarray, str]:
        """The attention (N,) that explains the prediction, and a sentence saying which."""
        if self.explains:
            return self.attention[:, 0], self.explains
        k = self.attention.shape[1]
        pred = self.classes[self.predicted]
        if k == len(self.classes) and k > 1:
            return self.attention[:, self.predicted], (
                f"explains: the '{pred}' branch (predicted class) of a {k}-branch model")
        return self.attention[:, 0], (
            f"explains: the shared attention of a single-branch model (same for every class; "
            f"predicted '{pred}')")
