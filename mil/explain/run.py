"""A trained run -> explanations: which models explain which slide, then every export.

Out-of-fold where possible: a slide of the run's own store that was in fold k's test part is
explained by fold k's model alone (the model that never saw it, as in predictions.csv); every
other slide by the models for new slides (the final ensemble, else all folds), as
``mil.predict`` would call it (same standardisation and decision rule).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mil.errors import CliError
from mil.explain.attention import NORMS, SlideAttention, normalise_attention
from mil.explain.cohort import cohort_section
from mil.explain.export import SlideExport, export_slide, write_summary
from mil.explain.occlusion import system_occlusion
from mil.explain.panel import export_targets, panel_truths
from mil.explain.report import write_index
from mil.explain.staging import staged
from mil.store import file_names, open_store
from mil.store.images import image_root
from mil.train.ensemble import Ensemble, SlidePrediction
from mil.train.labels import read_labels
from mil.train.predict import decided, is_multilabel
from mil.train.rundir import RunDir

log = logging.getLogger("mil.heatmap")


@dataclass
class ModelGroup:
    """Checkpoints that explain some slides, and a sentence saying which models they are."""

    ckpts: list[Path]
    slides: list[str]
    label: str


def model_groups(run: RunDir, store: Path, slides: list[str]) -> list[ModelGroup]:
    """The groups of slides explained by one fold model (out-of-fold) or by all of them."""
    ckpts = run.fold_checkpoints()
    test_fold: dict[str, int] = {}
    if run.is_own_store(store):
        test_fold = {s: k for k, f in enumerate(run.folds()) for s in f.test if k in ckpts}
    groups = [ModelGroup([ckpts[k]], [s for s in slides if test_fold.get(s) == k],
                         f"model: fold {k} only (out-of-fold: the slide was in its test part)")
              for k in ckpts]
    rest = [s for s in slides if s not in test_fold]
    new_ckpts, which = run.models()
    groups.append(ModelGroup(new_ckpts, rest, which))
    return [g for g in groups if g.slides]


def explain_group(run: RunDir, store: Path, group: ModelGroup, *, occlusion: bool,
                  batch_size: int = 8) -> list[tuple[SlidePrediction, np.ndarray | None]]:
    """(prediction, occlusion deltas (N,) or None) per slide of ``group``, called by the run's
    decision rule."""
    ensemble = Ensemble(group.ckpts, run.config, group.label)
    source = ensemble.source(store, group.slides)
    for note in ensemble.notes:
        log.info("%s: %s", group.label, note)
    preds = ensemble.predict(source, batch_size)
    decided(run, preds)
    results = []
    for pred in preds:
        occ = None
        if occlusion:  # multilabel: every target's drop, (N, T); else the call's, (N,)
            rows = source.rows[pred.slide_id]
            targets = range(len(pred.classes)) if pred.calls is not None else [pred.call]
            occ = np.zeros((len(pred.cell_ids), len(targets)))  # unseen cells change nothing
            for j, target in enumerate(targets):
                occ[rows if rows is not None else slice(None), j] = system_occlusion(
                    ensemble.systems, *source.get(pred.slide_id), target)
            occ = occ if pred.calls is not None else occ[:, 0]
        results.append((pred, occ))
    return results


def truths(run: RunDir, labels: str | Path | None) -> dict[str, str]:
    """True labels: ``--labels`` if given, else the run's own predictions.csv truth column."""
    if labels is not None:
        return read_labels(labels).names()
    p = run.path / "predictions.csv"
    if not p.is_file():
        return {}
    with p.open(newline="", encoding="utf-8") as fh:
        return {r["slide_id"]: r["truth"] for r in csv.DictReader(fh) if r.get("truth")}


@dataclass
class HeatmapOptions:
    """What ``python -m mil.heatmap`` exports."""

    source: str | None = None
    slides: list[str] | None = None
    top_k: int = 16
    norm: str = "rank"
    occlusion: bool = False
    labels: str | None = None
    batch_size: int = 8


def export_run(run_dir: str | Path, store: str | Path | None, out: str | Path,
               opts: HeatmapOptions | None = None) -> list[SlideExport]:
    """Everything for the slides of ``store`` (default: the run's): folders, summary, index."""
    opts = opts or HeatmapOptions()
    out = Path(out)
    normalise_attention(np.zeros(1), opts.norm)  # reject a bad --norm before any work
    run = RunDir(run_dir)
    store = Path(store or run.store)
    st = open_store(store)
    root = image_root(st.attrs, opts.source, store)
    slides = opts.slides or st.slides()
    unknown = [s for s in slides if s not in st]
    if unknown:
        raise CliError(f"{store}: no slide(s) {', '.join(unknown[:5])}")
    multilabel = is_multilabel(run)
    truth = truths(run, opts.labels) if not multilabel else {}
    panel_truth = panel_truths(run, opts.labels) if multilabel else {}
    keys = [f"{s} {t}" for s in slides for t in run.config.get("targets") or []]
    names = file_names(keys if multilabel else slides)  # distinct without case and on Windows
    rows: list[SlideExport] = []
    with staged(out) as stage:  # nothing appears in OUT unless everything was written
        for group in model_groups(run, store, slides):
            for pred, occ in explain_group(run, store, group, occlusion=opts.occlusion,
                                           batch_size=opts.batch_size):
                if multilabel:
                    rows += export_targets(pred, occ, stage, panel_truth, names, source=root,
                                           top_k=opts.top_k, norm=opts.norm, models=group.label,
                                           coords=st.read(pred.slide_id).coords)
                    continue
                sa = SlideAttention(pred.slide_id, pred.classes, pred.probs, pred.attention,
                                    pred.cell_ids, pred.paths, truth.get(pred.slide_id),
                                    st.read(pred.slide_id).coords, pred.blast_prob, occ,
                                    models=group.label, call=pred.call)
                rows.append(export_slide(sa, stage, source=root, top_k=opts.top_k,
                                         norm=opts.norm, name=names[pred.slide_id]))
        order = {s: i for i, s in enumerate(slides)}
        rows.sort(key=lambda r: order[r.slide_id])  # stable: a slide's targets stay in order
        write_summary(stage, rows)
        missing = sum(r.n_missing for r in rows)
        notes = [f"run {run.path.resolve()}; store {store.resolve()}; images under {root or '.'}",
                 f"colour: {NORMS[opts.norm][2]}; top/bottom {opts.top_k} cells per gallery",
                 f"{missing} cell image(s) missing in total" if missing else "every cell image found"]
        cohort = cohort_section(run.path, rows) if run.is_own_store(store) else ""
        write_index(stage, rows, title=f"cellmil attention: {run.path.name}", notes=notes,
                    cohort=cohort)
    return rows
