"""The cohort page at the top of the HTML report: how the run does on its own slides.

From the run's out-of-fold predictions (``predictions.csv``, ``metrics.json``): the confusion
matrix (the decision rule's cross-fitted calls; multilabel: a 2x2 table per target), ROC curves
one-vs-rest per class or per target with their AUROC, the reliability diagram before and after
temperature scaling with the ECE, and the exported slides the model was least sure of, each
linked to its gallery. Plain HTML and inline SVG: no script, style sheet, font or image from
anywhere, so the report stays one offline folder. Every string from data is escaped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from mil.explain.export import SlideExport
from mil.stats import auroc

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
STYLE = """
#cohort { margin-bottom: 2em; }
#cohort .panels { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
#cohort figure { margin: 0; }
#cohort table.cm td { text-align: right; min-width: 2.5em; }
#cohort table.cm td.diag { background: #e6f2e6; font-weight: bold; }
#cohort svg { background: #fff; border: 1px solid #ddd; }
"""


def roc_points(y: np.ndarray, s: np.ndarray) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every distinct score cut, from (0, 0)."""
    y, s = np.asarray(y).astype(bool), np.asarray(s, np.float64)
    cuts = np.unique(s)[::-1]
    fpr = [0.0] + [float((s[~y] >= c).mean()) for c in cuts]
    tpr = [0.0] + [float((s[y] >= c).mean()) for c in cuts]
    return fpr, tpr


def svg_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], xlabel: str,
              ylabel: str, title: str, size: int = 260) -> str:
    """A unit-square line chart (diagonal dashed) as inline SVG, one legend line per series."""
    pad, h = 36, size + 16 * len(series)
    def px(x: float, y: float) -> str:
        return f"{pad + x * (size - pad - 8):.1f},{size - pad - y * (size - pad - 8) + 8:.1f}"

    parts = [f'<svg width="{size}" height="{h}" '
             f'role="img" aria-label="{escape(title, quote=True)}">',
             f'<text x="{size / 2}" y="14" text-anchor="middle" font-size="12">{escape(title)}</text>',
             f'<polyline points="{px(0, 0)} {px(1, 0)} {px(1, 1)} {px(0, 1)} {px(0, 0)}" '
             'fill="none" stroke="#bbb"/>',
             f'<polyline points="{px(0, 0)} {px(1, 1)}" fill="none" stroke="#999" '
             'stroke-dasharray="4 3"/>',
             f'<text x="{size / 2}" y="{size - 6}" text-anchor="middle" font-size="11">'
             f'{escape(xlabel)}</text>',
             f'<text x="10" y="{size / 2}" font-size="11" transform="rotate(-90 10 {size / 2})" '
             f'text-anchor="middle">{escape(ylabel)}</text>']
    for i, (label, xs, ys) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join(px(float(x), float(y)) for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"/>')
        ly = size + 12 + 16 * i
        parts.append(f'<rect x="{pad}" y="{ly - 9}" width="12" height="4" fill="{c}"/>'
                     f'<text x="{pad + 18}" y="{ly - 4}" font-size="11">{escape(label)}</text>')
    return "".join(parts) + "</svg>"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], diag: bool = True) -> str:
    th = "".join(f"<th>{escape(str(h))}</th>" for h in head)
    body = "".join("<tr><th>" + escape(str(r[0])) + "</th>" + "".join(
        f'<td class="{"diag" if diag and j == i else ""}">{v}</td>' for j, v in enumerate(r[1:]))
        + "</tr>" for i, r in enumerate(rows))
    return f'<table class="cm"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _read(run: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    pred, metrics = run / "predictions.csv", run / "metrics.json"
    rows = list(csv.DictReader(pred.open(newline="", encoding="utf-8"))) if pred.is_file() else []
    return rows, (json.loads(metrics.read_text(encoding="utf-8")) if metrics.is_file() else {})


def _multiclass(rows: list[dict[str, str]], m: dict[str, Any]) -> tuple[str, str, list]:
    classes = m["classes"]
    decided = (m.get("decision") or {}).get("cross_fitted") or m["pooled"]
    cm = _table(["truth \\ call", *classes],
                [[c, *decided["confusion"][i]] for i, c in enumerate(classes)])
    y = np.array([classes.index(r["truth"]) for r in rows])
    series = []
    for j, c in enumerate(classes):
        s = np.array([float(r[f"prob_{c}"]) for r in rows])
        series.append((f"{c} (AUROC {auroc(y == j, s):.3f})", *roc_points(y == j, s)))
    return cm, "calls by the decision rule, each fold fitted on the others", series


def _multilabel(rows: list[dict[str, str]], m: dict[str, Any]) -> tuple[str, str, list]:
    tables, series = [], []
    for t in m["targets"]:
        known = [r for r in rows if r.get(f"truth_{t}") in ("0", "1")]
        y = np.array([r[f"truth_{t}"] == "1" for r in known])
        call = np.array([r[f"call_{t}"] == "1" for r in known])
        s = np.array([float(r[f"prob_{t}"]) for r in known])
        tables.append(f"<figure><figcaption>{escape(t)}</figcaption>" + _table(
            ["truth \\ call", "0", "1"], [["0", int((~y & ~call).sum()), int((~y & call).sum())],
                                          ["1", int((y & ~call).sum()), int((y & call).sum())]])
            + "</figure>")
        series.append((f"{t} (AUROC {auroc(y, s):.3f})", *roc_points(y, s)))
    return "".join(tables), "per target; calls by thresholds fitted on the other folds", series


def _reliability(m: dict[str, Any]) -> str:
    cal = m.get("calibration")
    if not cal:
        return "<p class='meta'>no calibration record (a run fitted before it was kept)</p>"
    panels = cal.get("per_target", {"top label": cal})
    out = []
    for name, d in panels.items():
        series = [(f"{v.replace('_', ' ')} (ECE {d['ece'][v]:.3f})",
                   d["reliability"][v]["confidence"], d["reliability"][v]["outcome"])
                  for v in ("before", "after_cross_fitted")]
        out.append(svg_chart(series, "predicted probability", "observed frequency",
                             f"reliability: {name}"))
    return "".join(out)


def least_sure(rows: Sequence[SlideExport], n: int = 10) -> str:
    """The ``n`` exported slides (or slide-target views) with the lowest probability of their
    call, linked to their galleries."""
    pick = sorted(rows, key=lambda r: r.probability)[:n]
    items = []
    for r in pick:
        href = escape(quote(r.folder, safe="") + "/" + quote(r.files.get("gallery", "")), quote=True)
        truth = escape(r.truth) if r.truth else "<i>unknown</i>"
        items.append(f'<li><a href="{href}">{escape(r.slide_id)}</a>: call '
                     f"{escape(r.prediction)} (p = {r.probability:.3f}), truth {truth}</li>")
    return "<ol>" + "".join(items) + "</ol>"


def cohort_section(run_dir: str | Path, rows: Sequence[SlideExport]) -> str:
    """The whole section (empty string when the run has no out-of-fold predictions)."""
    pred, m = _read(Path(run_dir))
    if not pred or "pooled" not in m:
        return ""
    cm, what, series = (_multilabel if m.get("task") == "multilabel" else _multiclass)(pred, m)
    roc = svg_chart(series, "false positive rate", "true positive rate", "ROC, out-of-fold")
    return "\n".join([
        f"<style>{STYLE}</style>",
        '<section id="cohort"><h2>Cohort</h2>',
        f'<p class="meta">out-of-fold predictions of the run on its {len(pred)} labelled slides '
        "(each slide scored by the fold model that never saw it)</p>",
        '<div class="panels">',
        f"<div><h3>Confusion matrix</h3><p class='meta'>{escape(what)}</p>{cm}</div>",
        f"<div><h3>ROC</h3>{roc}</div>",
        f"<div><h3>Calibration</h3>{_reliability(m)}</div>",
        "</div>",
        f"<h3>Least sure</h3><p class='meta'>the {min(10, len(rows))} exported slides with the "
        "lowest probability of their call; each links to its gallery</p>",
        least_sure(rows),
        "</section>",
    ])
