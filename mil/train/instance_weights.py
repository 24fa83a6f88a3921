"""Noisy instance weights: how the per-cell ``blast_prob`` of the blast filter enters MIL.

Modes (a ``StrEnum`` registry):

- ``none``    every cell counts; ``blast_prob`` is not read.
- ``filter``  keep cells with ``p >= threshold``; a slide left empty keeps all its cells
              (with a warning naming it), so no bag is ever empty.
- ``prior``   every cell is kept; ``strength * log(p)`` (p clamped to [1e-4, 1]) is added to the
              attention logits (:func:`mil.train.model.blast_log_prior`), so the filter guides
              attention without having the last word: a confident non-blast cell needs a logit
              ~9 (x strength) higher to win, a cell at p = 0.5 pays only ~0.7.

Noise tempering (``--noise-rate e``): the blast filter is trained on expert calls that are wrong
with probability ``e``. If a call is wrong with probability e, a cell called "blast" is a blast
with probability ``1 - e`` and one called "not blast" is a blast with probability ``e``; mixing
by the filter's belief ``p`` gives ``p' = (1 - e) p + e (1 - p) = (1 - 2e) p + e``. The map is
affine, keeps the order of cells, and shrinks every probability toward 0.5 (e = 0: unchanged;
e -> 0.5: all 0.5, i.e. the calls carry no information and ``prior`` becomes ``none``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError
from mil.store import BLAST_PROB, SlideId

log = logging.getLogger("mil")


class WeightMode(StrEnum):
    NONE = "none"
    FILTER = "filter"
    PRIOR = "prior"


def temper(prob: np.ndarray, noise_rate: float) -> np.ndarray:
    """``p' = (1 - 2e) p + e``: shrink blast probabilities toward 0.5 by the error rate ``e``."""
    p = np.asarray(prob, dtype=np.float32)  # (N,)
    return ((1.0 - 2.0 * noise_rate) * p + noise_rate).astype(np.float32)  # (N,)


def parse_noise_rate(value: str | float | None) -> float:
    """A number in [0, 0.5), or the JSON of ``mil.blast audit --score`` (key ``error_rate``)
    or of ``mil.blast noise`` (key ``filter_error_rate``: its ``error_rate`` is the noise of the
    expert labels, not of the filter's calls)."""
    if value is None or value == "":
        return 0.0
    try:
        rate = float(value)
        source = "--noise-rate"
    except (TypeError, ValueError):
        path = Path(str(value))
        if not path.is_file():
            raise CliError(f"--noise-rate: {value!r} is neither a number nor a file") from None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            rate = float(doc["filter_error_rate"] if "filter_error_rate" in doc
                         else doc["error_rate"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CliError(f"--noise-rate: {path} is not JSON with a numeric 'error_rate'") from None
        source = str(path)
    if not 0.0 <= rate < 0.5:
        raise CliError(f"--noise-rate: {rate} from {source} must be in [0, 0.5)")
    return rate


@dataclass(frozen=True)
class InstanceWeights:
    """The instance-weight settings of a run; ``select`` applies them to one slide."""

    mode: str = "none"
    threshold: float = 0.5
    strength: float = 1.0
    noise_rate: float = 0.0

    @property
    def needs_prob(self) -> bool:
        return self.mode != WeightMode.NONE

    def select(self, slide_id: SlideId, prob: np.ndarray | None,
               n_cells: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(rows to keep or None for all, tempered probabilities of the kept rows or None).

        ``prob (N,)`` is the slide's stored ``blast_prob`` (None when absent: an error for modes
        that need it).
        """
        if not self.needs_prob:
            return None, None
        if prob is None:
            raise CliError(f"slide '{slide_id}' has no '{BLAST_PROB}' (needed by instance "
                           f"weights '{self.mode}'); run python -m mil.blast predict first")
        p = temper(prob, self.noise_rate)  # (N,)
        if self.mode == WeightMode.PRIOR:
            return None, p
        rows = np.flatnonzero(p >= self.threshold)  # (N_kept,)
        if rows.size == 0:
            log.warning("slide '%s': no cell has blast_prob >= %g; keeping all %d cells",
                        slide_id, self.threshold, n_cells)
            return None, p
        return rows, p[rows]


def check_one_filter(store: Any, slide_ids: Sequence[SlideId]) -> None:
    """Refuse slides whose ``blast_prob`` came from different blast filters (e.g. after an
    interrupted ``mil.blast predict --overwrite``): one run weighs every bag by one filter."""
    by_filter: dict[str, list[SlideId]] = {}
    for sid in slide_ids:
        if BLAST_PROB in store.annotations(sid):
            sha = str(store.annotation_attrs(sid, BLAST_PROB).get("filter_sha256") or "unknown")
            by_filter.setdefault(sha, []).append(sid)
    if len(by_filter) > 1:
        parts = sorted(by_filter.items(), key=lambda kv: -len(kv[1]))
        what = "; ".join(f"{len(ids)} slide(s) from filter {sha[:12]} (e.g. '{ids[0]}')"
                         for sha, ids in parts)
        raise CliError(f"{store.path}: {BLAST_PROB} comes from {len(parts)} blast filters ({what}); "
                       "re-run python -m mil.blast predict --filter FILTER --overwrite to finish it")

