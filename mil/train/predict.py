"""``python -m mil.predict``: a run's models on new slides; predictions and attention CSVs.

The ensemble is the run's final models (trained on every labelled slide, :mod:`mil.train.final`)
when it has them, else its fold models (``--models`` chooses); the output says which.
Probabilities are the mean of the models' softmax, calibrated by the run's temperature, and the
call is the run's decision rule (:mod:`mil.train.calibration`); ``--adapt-prevalence`` replaces
both by those under the cohort's own class prevalence, estimated by EM
(:mod:`mil.train.prevalence`). A run fitted with ``--standardise cohort`` standardises the
features by the predicted store's own mean/std, and says so. ``--test-labels`` scores the calls
and the run's baselines (:mod:`mil.train.baselines`) on labelled slides of the cohort.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError
from mil.store import SlideId, file_name, open_store
from mil.train.baselines import NAMES, external
from mil.train.calibration import DecisionRule
from mil.train.conformal import ConformalScores, multiclass_sets, target_calls
from mil.train.ensemble import Ensemble, SlidePrediction
from mil.train.labels import LabelTable, read_labels
from mil.train.metrics import comparison_table, slide_metrics
from mil.train.panel_baselines import panel_external
from mil.train.panel_calibration import load_panel_rule
from mil.train.panel_csv import write_panel_predictions
from mil.train.panel_labels import read_panel
from mil.train.panel_metrics import panel_metrics, panel_table
from mil.train.prevalence import describe, em_prevalence
from mil.train.rundir import RunDir


def decide(run: RunDir, raw: np.ndarray, adapt: bool = False
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(probabilities (n, C), calls (n,), calls of the fixed rule (n,), notes) from the
    ensemble's mean softmax ``raw (n, C)`` by the run's decision rule (and, with ``adapt``, the
    EM prevalence of these slides)."""
    rule = DecisionRule.load(run.path)
    if rule is None:
        if adapt:
            raise CliError(f"{run.path} has no calibration.json (fitted by an older mil.fit); "
                           "--adapt-prevalence needs it: re-run mil.fit on this folder")
        calls = raw.argmax(1)
        return raw, calls, calls, ["decision rule: the most probable class (the run has no "
                                   "calibration.json)"]
    probs = rule.calibrate(raw)
    calls = rule.calls(probs)
    notes = [rule.describe()]
    if not adapt:
        return probs, calls, calls, notes
    fit = em_prevalence(rule.prior_calibrated(raw), rule.train_prior)
    adapted = fit.probs.argmax(1)
    notes.append(describe(fit, rule.classes, rule.train_prior, calls, adapted))
    return fit.probs, adapted, calls, notes


def decided(run: RunDir, preds: list[SlidePrediction], adapt: bool = False
            ) -> tuple[np.ndarray, list[str]]:
    """Set each prediction's probabilities and call by :func:`decide`; returns (the fixed
    rule's calls (n,), notes). A multi-label run calibrates and calls each target by its
    per-target rule (``calls`` (T,) on each prediction; the returned calls are (n, T))."""
    if is_multilabel(run):
        if adapt:
            raise CliError("--adapt-prevalence is for one label per slide; this run is "
                           "--task multilabel")
        rule = load_panel_rule(run.path)
        probs = rule.calibrate(np.stack([p.probs for p in preds]))  # (n, T)
        calls = rule.calls(probs)  # (n, T)
        for p, q, c in zip(preds, probs, calls, strict=True):
            p.probs, p.calls = q, c
        return calls, [rule.describe()]
    probs, calls, fixed, notes = decide(run, np.stack([p.probs for p in preds]), adapt)
    for p, q, c in zip(preds, probs, calls, strict=True):
        p.probs, p.call = q, int(c)  # float64: an adapted 1 - 1e-7 must not round to a tie
    return fixed, notes


@dataclass
class CohortPrediction:
    """The run's models on slides of one store, with what was done to get there."""

    slides: list[SlidePrediction]
    notes: list[str]  # which models, standardisation, decision rule, prevalence
    fixed_calls: np.ndarray  # (n,) the fixed rule's calls (the slides' own without adaptation)
    standardise: str  # as applied to this store: none, train or cohort
    adapted: bool = False


def predict_cohort(run_dir: str | Path, store: str | Path | None = None,
                   slides: list[SlideId] | None = None, batch_size: int = 8,
                   models: str = "auto", adapt: bool = False) -> CohortPrediction:
    """The run's ensemble (final models, else folds) on ``slides`` (default: all) of ``store``
    (default: the run's), calibrated and called by the run's decision rule."""
    run = RunDir(run_dir)
    ckpts, which = run.models(models)
    ensemble = Ensemble(ckpts, run.config, which)
    preds = ensemble.predict(ensemble.source(store or run.store, slides), batch_size)
    fixed, notes = decided(run, preds, adapt)
    return CohortPrediction(preds, [which, *ensemble.notes, *notes], fixed, ensemble.applied,
                            adapt)


def predict_slides(run_dir: str | Path, store: str | Path | None = None,
                   slides: list[SlideId] | None = None, batch_size: int = 8) -> list[SlidePrediction]:
    """:func:`predict_cohort`'s slides."""
    return predict_cohort(run_dir, store, slides, batch_size).slides


def evaluate(run_dir: str | Path, pred: CohortPrediction, store: str | Path,
             table: LabelTable) -> dict[str, Any]:
    """Metrics on labelled slides of the predicted cohort: the run's models at their calls (and
    at the fixed rule's, when adapted) and its baselines."""
    at = {p.slide_id: i for i, p in enumerate(pred.slides)}
    unknown = [s for s in table.slide_ids if s not in at]
    if unknown:
        raise CliError(f"labelled slide(s) not predicted: {', '.join(unknown[:5])}")
    idx = [at[s] for s in table.slide_ids]
    probs = [pred.slides[i].probs for i in idx]
    classes = pred.slides[0].classes
    out = {"mil": slide_metrics(table.labels, probs, classes, [pred.slides[i].call for i in idx])}
    if pred.adapted:
        out["mil_fixed_rule"] = slide_metrics(table.labels, probs, classes,
                                              [int(pred.fixed_calls[i]) for i in idx])
    out["baselines"] = external(Path(run_dir), open_store(store), table.slide_ids, table.labels,
                                classes, cohort=pred.standardise == "cohort")
    return out


def panel_labelled_report(run_dir: str | Path, pred: CohortPrediction, store: str | Path,
                          labels: str | Path, out: Path) -> str:
    """A multi-label run on labelled slides (a multilabel CSV): per-target metrics of its calls
    and of its baselines, written to ``out``; returns the printed table."""
    targets = pred.slides[0].classes
    table = read_panel(labels, targets, [p.slide_id for p in pred.slides])
    at = {p.slide_id: p for p in pred.slides}
    probs = np.stack([at[s].probs for s in table.slide_ids])
    calls = np.stack([at[s].calls for s in table.slide_ids])
    rows = {"MIL": panel_metrics(table.y, probs, targets, calls)}
    base = panel_external(Path(run_dir), open_store(store), table.slide_ids, table.y, targets,
                          cohort=pred.standardise == "cohort")
    rows.update({NAMES[n]: m for n, m in base.items() if "per_target" in m})
    out.write_text(json.dumps({"notes": pred.notes, "mil": rows["MIL"], "baselines": base},
                              indent=1) + "\n", encoding="utf-8")
    return f"{len(table.slide_ids)} labelled slides ({labels}):\n" + panel_table(rows, targets)


def labelled_report(run_dir: str | Path, pred: CohortPrediction, store: str | Path,
                    labels: str | Path, out: Path) -> str:
    """:func:`evaluate` on the slides of ``labels``, written to ``out`` as JSON; returns the
    printed table (multi-label runs: :func:`panel_labelled_report`)."""
    if pred.slides and pred.slides[0].calls is not None:
        return panel_labelled_report(run_dir, pred, store, labels, out)
    classes = pred.slides[0].classes
    table = read_labels(labels, classes, [p.slide_id for p in pred.slides])
    m = evaluate(run_dir, pred, store, table)
    out.write_text(json.dumps({"notes": pred.notes, **m}, indent=1) + "\n", encoding="utf-8")
    rows = {("MIL, adapted prevalence" if pred.adapted else "MIL"): m["mil"]}
    if "mil_fixed_rule" in m:
        rows["MIL, fixed rule"] = m["mil_fixed_rule"]
    rows.update({NAMES[n]: b for n, b in m["baselines"].items() if "calls" in b})
    return f"{len(table.slide_ids)} labelled slides ({labels}):\n" + comparison_table(rows, classes)


def is_multilabel(run: RunDir) -> bool:
    """Whether the run was fitted with ``--task multilabel``."""
    return run.config.get("task", "multiclass") == "multilabel"


def write_predictions(path: Path, preds: list[SlidePrediction],
                      extra: dict[str, list[str]] | None = None) -> None:
    """``slide_id,prediction,prob_<class>...`` for every prediction (its call when decided);
    multilabel: ``slide_id,prob_<target>...,call_<target>...``; then the ``extra`` columns
    (name -> one value per prediction, e.g. the conformal sets)."""
    extra = extra or {}
    if preds and preds[0].calls is not None:
        write_panel_predictions(path, [p.slide_id for p in preds], None,
                                np.stack([p.probs for p in preds]),
                                np.stack([p.calls for p in preds]), preds[0].classes, extra)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "prediction", *(f"prob_{c}" for c in preds[0].classes), *extra])
        for i, r in enumerate(preds):
            call = r.call if r.call >= 0 else int(r.probs.argmax())
            w.writerow([r.slide_id, r.classes[call], *(f"{p:.6f}" for p in r.probs),
                        *(col[i] for col in extra.values())])


def conformal_columns(run_dir: str | Path, preds: list[SlidePrediction], alpha: float
                      ) -> tuple[dict[str, list[str]], str]:
    """The ``--conformal ALPHA`` columns (multiclass ``prediction_set``; multilabel ``set_<t>``
    in {0, 1, both}; ``review`` = 1 where a set holds more than one answer) and a note."""
    sc = ConformalScores.load(run_dir)
    qs = sc.thresholds(alpha)
    probs = np.stack([p.probs for p in preds])
    if sc.task == "multilabel":
        calls = target_calls(probs, qs)
        cols = {f"set_{t}": [c[j] for c in calls] for j, t in enumerate(sc.names)}
        review = [int("both" in c) for c in calls]
    else:
        sets = multiclass_sets(probs, sc.names, qs[0])
        cols = {"prediction_set": ["|".join(s) for s in sets]}
        review = [int(len(s) > 1) for s in sets]
    cols["review"] = [str(r) for r in review]
    n = len(sc.probs)
    note = (f"conformal sets at ALPHA = {alpha} (coverage >= {1 - alpha:.2f} for slides "
            f"exchangeable with the run's {n} out-of-fold slides: same cohort); "
            f"{sum(review)} of {len(preds)} slide(s) flagged for review")
    return cols, note


def write_attention(pred: SlidePrediction, folder: Path, name: str | None = None) -> Path:
    """``folder/<name>.csv`` (default: :func:`mil.store.file_name` of the slide): cell_id,
    path, attention per branch, blast_prob. Use :func:`mil.store.file_names` for ``name``
    when writing several slides, so that no two names differ only in case."""
    folder.mkdir(parents=True, exist_ok=True)
    k = pred.attention.shape[1]
    names = ["attention"] if k == 1 else [f"attention_{c}" for c in pred.classes[:k]]
    path = folder / f"{name or file_name(pred.slide_id)}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path", *names, "blast_prob"])
        for i, cid in enumerate(pred.cell_ids):
            bp = "" if pred.blast_prob is None else f"{float(pred.blast_prob[i]):.6f}"
            w.writerow([cid, pred.paths[i], *(f"{a:.6g}" for a in pred.attention[i]), bp])
    return path
