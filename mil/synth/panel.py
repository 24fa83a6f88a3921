"""``python -m mil.synth OUT --task multilabel``: a synthetic mutation panel, where one slide may
carry several targets at once.

Three targets with realistic prevalences among patients: NPM1 30%, FLT3-ITD 20% and CEBPA 10%.
FLT3-ITD travels with NPM1 (60% of the FLT3-ITD patients are NPM1-positive, against 30% of all
patients: a positive correlation) and CEBPA occurs only without NPM1 (as the two rarely co-occur
in AML). The counts are exact (``round(prevalence * patients)``), the patients drawn by seed.
Each positive target has a blast cue; a blast that shows a cue shows one of its slide's targets,
picked at random, so a slide positive for two targets shows both cues on different blasts.
NPM1 and CEBPA keep the cues of :mod:`mil.synth.cells`; FLT3-ITD, which has no morphology of its
own, borrows the Auer-rod painter (a synthetic stand-in, not a claim about FLT3-ITD blasts).
A slide with no target shows no cue. Blast share, cue share, non-blast mix and stain are drawn
as for the multiclass cohort, without looking at the labels.

Outputs in OUT as :func:`mil.synth.cohort.make_cohort`, except ``slides.csv``:
``slide_id,patient_id,NPM1,FLT3-ITD,CEBPA`` with 1/0 (the ``mil.fit --task multilabel`` labels)
and a ``cue`` column in ``cells.csv`` (the target whose cue the cell shows). Same seed, same bytes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mil.config import save_config
from mil.synth.canvas import draw_stain
from mil.synth.cells import render_cell
from mil.synth.cohort import (
    SlideJob,
    _prepare,
    _write_csv,
    expert_labels,
    png_bytes,
    slide_cells,
    slide_plan,
)
from mil.synth.config import SynthConfig

log = logging.getLogger("mil.synth")

TARGETS = ("NPM1", "FLT3-ITD", "CEBPA")
PREVALENCE = {"NPM1": 0.30, "FLT3-ITD": 0.20, "CEBPA": 0.10}
FLT3_WITH_NPM1 = 0.6  # share of FLT3-ITD patients who are NPM1-positive (base rate 0.3)
CUE_OF = {"NPM1": "NPM1", "FLT3-ITD": "PML-RARA", "CEBPA": "CEBPA"}  # painter per target


def panel_labels(n_patients: int, seed: int) -> np.ndarray:
    """(n_patients, 3) 0/1 labels over :data:`TARGETS` (see the module docstring)."""
    rng = np.random.default_rng([seed, 10])
    y = np.zeros((n_patients, len(TARGETS)), dtype=np.int64)
    count = {t: max(1, round(p * n_patients)) for t, p in PREVALENCE.items()}
    y[rng.choice(n_patients, count["NPM1"], replace=False), 0] = 1
    pos, neg = np.flatnonzero(y[:, 0] == 1), np.flatnonzero(y[:, 0] == 0)
    with_npm1 = min(len(pos), round(FLT3_WITH_NPM1 * count["FLT3-ITD"]))
    y[rng.choice(pos, with_npm1, replace=False), 1] = 1
    y[rng.choice(neg, min(len(neg), count["FLT3-ITD"] - with_npm1), replace=False), 1] = 1
    y[rng.choice(neg, min(len(neg), count["CEBPA"]), replace=False), 2] = 1
    return y


@dataclass(frozen=True)
class PanelJob:
    """One slide to draw: the multiclass job's settings and the slide's positive targets."""

    slide: SlideJob
    positives: tuple[str, ...]


def draw_panel_slide(job: PanelJob) -> list[tuple]:
    """Draw and save one slide; returns its cells.csv rows (with the cue's target last)."""
    s = job.slide
    rng = np.random.default_rng([s.seed, 1, s.index])
    stain = draw_stain(rng)
    types, cues = slide_cells(rng, s)
    pick = np.random.default_rng([s.seed, 11, s.index])
    folder = s.images / s.slide_id
    folder.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(s.cells - 1)))
    rows = []
    for i, (kind, cue) in enumerate(zip(types, cues, strict=True)):
        target = (job.positives[int(pick.integers(len(job.positives)))]
                  if cue and kind == "blast" and job.positives else "")
        img = render_cell(np.random.default_rng([s.seed, 2, s.index, i]), kind,
                          class_name=CUE_OF.get(target), shows_cue=bool(target), size=s.size,
                          stain=stain)
        cell_id = f"{s.slide_id}_c{i:0{width}d}"
        (folder / f"{cell_id}.png").write_bytes(png_bytes(img))
        rows.append((s.slide_id, cell_id, f"{s.slide_id}/{cell_id}.png", kind,
                     int(kind == "blast"), int(bool(target)), target))
    return rows


def make_panel(out: Path, cfg: SynthConfig) -> dict[str, object]:
    """Write the multi-label cohort of ``cfg`` (its ``classes`` is unused) into ``out``."""
    cfg.validate()
    out = Path(out)
    images = _prepare(out, cfg.overwrite)
    start = time.perf_counter()
    plan = slide_plan(cfg.slides, 2, cfg.paired, cfg.seed)  # slide ids and patients only
    patients = sorted({p for _, _, p in plan})
    labels = dict(zip(patients, panel_labels(len(patients), cfg.seed), strict=True))
    jobs = [PanelJob(SlideJob(images, cfg.seed, i, sid, "", cfg.cells, cfg.image_size,
                              (cfg.blast_min, cfg.blast_max), (cfg.cue_min, cfg.cue_max)),
                     tuple(t for t, v in zip(TARGETS, labels[pid], strict=True) if v))
            for i, (sid, _, pid) in enumerate(plan)]
    if cfg.workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(cfg.workers, len(jobs))) as pool:
            drawn = pool.map(draw_panel_slide, jobs)
    else:
        drawn = [draw_panel_slide(j) for j in jobs]
    rows = [r for slide in drawn for r in slide]
    noisy, truth = expert_labels(rows, cfg.labelled, cfg.noise, cfg.seed)
    _write_csv(out / "slides.csv", ["slide_id", "patient_id", *TARGETS],
               [(sid, pid, *labels[pid].tolist()) for sid, _, pid in plan])
    _write_csv(out / "cells.csv", ["slide_id", "cell_id", "path", "cell_type", "is_blast",
                                   "shows_cue", "cue"], rows)
    _write_csv(out / "cell_labels.csv", ["slide_id", "cell_id", "label"], noisy)
    _write_csv(out / "cell_labels_truth.csv", ["slide_id", "cell_id", "label"], truth)
    save_config(cfg, out / "config.yaml")  # with task: multilabel
    y = np.array([labels[pid] for _, _, pid in plan])
    log.info("synth: wrote %d cells of %d slides (%d patients; positive slides %s) to %s in %.1f s",
             len(rows), len(plan), len(patients),
             ", ".join(f"{t} {int(n)}" for t, n in zip(TARGETS, y.sum(0), strict=True)), out,
             time.perf_counter() - start)
    return {"slides": len(plan), "patients": len(patients), "cells": len(rows),
            "positives": dict(zip(TARGETS, y.sum(0).tolist(), strict=True))}
