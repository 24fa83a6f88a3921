"""The predictions CSV of a multi-label run: one probability and one 0/1 call per target."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_panel_predictions(path: Path, ids: list[str], truth: np.ndarray | None,
                            probs: np.ndarray, calls: np.ndarray, targets: list[str],
                            extra: dict[str, list[str]] | None = None) -> None:
    """``slide_id[, truth_<t>...], prob_<t>..., call_<t>...[, extra...]`` (truth: 1, 0 or
    empty; ``extra``: more columns, name -> one value per slide)."""
    extra = extra or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        head = [f"truth_{t}" for t in targets] if truth is not None else []
        w.writerow(["slide_id", *head, *(f"prob_{t}" for t in targets),
                    *(f"call_{t}" for t in targets), *extra])
        for i, sid in enumerate(ids):
            known = [] if truth is None else ["" if np.isnan(v) else str(int(v)) for v in truth[i]]
            w.writerow([sid, *known, *(f"{v:.6f}" for v in probs[i]), *map(int, calls[i]),
                        *(col[i] for col in extra.values())])
