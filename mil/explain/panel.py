"""Explanations of a multi-label run: every target's own attention branch, one export per
(slide, target), so each target's gallery shows the cells that target's branch attends to.

A (slide, target) export is the usual per-slide export (:func:`mil.explain.export.export_slide`)
of a two-class view, ``[not T, T]`` with the target's calibrated probability and call, and the
target's branch as the explained attention; its folder is ``file_name("<slide> <target>")``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from mil.explain.attention import SlideAttention
from mil.explain.export import SlideExport, export_slide
from mil.train.ensemble import SlidePrediction
from mil.train.panel_labels import read_panel
from mil.train.rundir import RunDir


def negative(target: str) -> str:
    return f"not {target}"


def panel_truths(run: RunDir, labels: str | Path | None) -> dict[tuple[str, str], str]:
    """(slide, target) -> ``T`` or ``not T`` for the known labels: ``--labels`` (a multi-label
    CSV) if given, else the run's predictions.csv."""
    targets = list(run.config.get("targets") or [])
    out: dict[tuple[str, str], str] = {}
    if labels is not None:
        table = read_panel(labels, targets)
        for sid, row in zip(table.slide_ids, table.y, strict=True):
            for t, v in zip(targets, row, strict=True):
                if not np.isnan(v):
                    out[(sid, t)] = t if v == 1 else negative(t)
        return out
    path = run.path / "predictions.csv"
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                for t in targets:
                    v = r.get(f"truth_{t}", "")
                    if v in ("0", "1"):
                        out[(r["slide_id"], t)] = t if v == "1" else negative(t)
    return out


def target_view(pred: SlidePrediction, j: int, truth: str | None, occlusion: np.ndarray | None,
                **common: Any) -> SlideAttention:
    """The two-class view of target ``j`` of one multi-label prediction."""
    t, k = pred.classes[j], len(pred.classes)
    p = float(pred.probs[j])
    own = pred.attention.shape[1] == k  # a branch per target; else one shared (mean / max)
    what = (f"the '{t}' branch of a {k}-target multi-label model" if own else
            f"the attention shared by all {k} targets (single-branch pooling)")
    return SlideAttention(
        pred.slide_id, [negative(t), t], np.array([1.0 - p, p]),
        pred.attention[:, j:j + 1] if own else pred.attention[:, :1],
        pred.cell_ids, pred.paths, truth, blast_prob=pred.blast_prob,
        occlusion=None if occlusion is None else occlusion[:, j],
        call=int(pred.calls[j]), explains=f"explains: {what} (p({t}) = {p:.3f})", **common)


def export_targets(pred: SlidePrediction, occlusion: np.ndarray | None, stage: Path,
                   truths: dict[tuple[str, str], str], names: dict[str, str],
                   **kw: Any) -> list[SlideExport]:
    """One export per target of ``pred``; ``names`` maps ``"<slide> <target>"`` to folders."""
    coords, models = kw.pop("coords"), kw.pop("models")
    rows = []
    for j, t in enumerate(pred.classes):
        sa = target_view(pred, j, truths.get((pred.slide_id, t)), occlusion, coords=coords,
                         models=models)
        rows.append(export_slide(sa, stage, name=names[f"{pred.slide_id} {t}"], **kw))
    return rows
