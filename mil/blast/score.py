"""Score an expert audit: consensus per cell, the filter's error rates, agreement, per rater.

    res = score_audit(Path("audit/"))            # audit folder (raters/*.csv + review.csv)
    res = score_audit(Path("audit/review.csv"))  # or its sheet, also one written before blinding
    res = score(Path("audit/"), "noise.json")    # the same, written to noise.json (+ consensus)
    labels = consensus_labels(Path("audit/"))    # {(slide_id, cell_id): "blast" | ...}

Raters: every ``raters/NAME.csv`` and, when its ``expert`` column is filled, ``review.csv``
itself (rater ``review.csv``). The filter's calls come from ``key.csv`` (or, in sheets written
before blinding, from review.csv's own ``predicted`` column).

Consensus of a cell: the majority over all answers given to it; a tie for the top count is
``tie``. Cells whose consensus is blast or non-blast score the filter; ``unsure`` and ``tie``
cells are excluded and counted; ``unusable`` cells are excluded and reported as the share of
unusable cells. ``error_rate`` is the whole-store error: per predicted class (stratum) error
rates weighted by the store's predicted-class shares, with Wilson intervals at the design's
effective sample size (:func:`mil.stats.stratified_proportion`). ``latent_class`` gives the
same rates with the raters' own mistakes modelled (:mod:`mil.blast.latent`). Audits drawn by another
strategy than ``stratified`` are not random samples: they get ``sample_error_rate`` only.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mil.blast.agreement import TIE, agreement, consensus, pairwise
from mil.blast.folder import (
    ANSWERS,
    BLAST,
    KEY,
    META,
    NONBLAST,
    REVIEW,
    UNSURE,
    UNUSABLE,
    CellKey,
    parse_answer,
    rater_files,
    read_rater,
)
from mil.blast.latent import latent_error
from mil.errors import CliError
from mil.stats import stratified_proportion, wilson_interval
from mil.tables import read_rows, row_error

log = logging.getLogger("mil.blast")
SHEET_RATER = "review.csv"


@dataclass
class Audit:
    """An audit folder as read: the sample in row order, the key, the raters' answers."""

    folder: Path
    cells: list[CellKey]
    predicted: dict[CellKey, int]  # 1 = called blast, 0 = called non-blast
    raters: dict[str, dict[CellKey, str]]
    meta: dict[str, Any]


def _sheet_and_folder(path: Path) -> tuple[Path, Path, Path]:
    """(review sheet, audit folder, review.json) for a folder or a sheet path."""
    if path.is_dir():
        return path / REVIEW, path, path / META
    if not path.is_file():
        raise CliError(f"audit folder or review sheet not found: {path}")
    return path, path.parent, path.with_suffix(".json")


def _cell_key(row: dict[str, str]) -> CellKey:
    if "slide_id" in row and "cell_id" in row:
        return (row["slide_id"], row["cell_id"])
    return ("row", row.get("row", ""))


def _read_sheet(sheet: Path) -> tuple[list[CellKey], dict[CellKey, int], dict[CellKey, str]]:
    """(cells, predicted calls if the sheet carries them, filled expert answers)."""
    rows = read_rows(sheet, ("expert",), what="review sheet")
    cells, predicted, answers = [], {}, {}
    for row_no, row in rows:
        key = _cell_key(row)
        cells.append(key)
        if "predicted" in row:
            call = parse_answer(row["predicted"])
            if call not in (BLAST, NONBLAST):
                raise row_error(sheet, row_no, f"unknown predicted value {row['predicted']!r} "
                                               "(expected blast/non-blast or 1/0)")
            predicted[key] = int(call == BLAST)
        if row["expert"]:
            answer = parse_answer(row["expert"])
            if answer is None:
                raise row_error(sheet, row_no, f"unknown expert value {row['expert']!r} "
                                               f"(expected {', '.join(ANSWERS)}, or 1/0)")
            answers[key] = answer
    return cells, predicted, answers


def load_audit(path: Path) -> Audit:
    """Read an audit folder (or its review sheet) and every rater file in it."""
    sheet, folder, side = _sheet_and_folder(path)
    cells, predicted, sheet_answers = _read_sheet(sheet)
    if not predicted:
        key_rows = read_rows(folder / KEY, ("slide_id", "cell_id", "predicted"),
                             what="audit key (the filter's calls)")
        calls = {(r["slide_id"], r["cell_id"]): parse_answer(r["predicted"]) for _, r in key_rows}
        absent = [c for c in cells if calls.get(c) not in (BLAST, NONBLAST)]
        if absent:
            raise CliError(f"{folder / KEY}: no blast/non-blast call for cell '{absent[0][1]}' "
                           f"of slide '{absent[0][0]}' of {sheet}")
        predicted = {c: int(calls[c] == BLAST) for c in cells}
    meta = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    raters = {name: read_rater(p) for name, p in rater_files(folder).items()}
    sample = set(cells)
    for name, answers in raters.items():
        stray = [c for c in answers if c not in sample]
        if stray:
            raise CliError(f"{rater_files(folder)[name]}: cell '{stray[0][1]}' of slide "
                           f"'{stray[0][0]}' is not in {sheet}")
    if sheet_answers:
        raters[SHEET_RATER] = sheet_answers
    return Audit(folder, cells, predicted, raters, meta)


def consensus_of(audit: Audit) -> dict[CellKey, str | None]:
    """Consensus answer (or ``tie``, or None when unanswered) of every sampled cell."""
    return {c: consensus([a[c] for a in audit.raters.values() if c in a]) for c in audit.cells}


def consensus_labels(path: Path) -> dict[CellKey, str]:
    """``{(slide_id, cell_id): consensus}`` of the answered cells of an audit (for --corrections)."""
    audit = load_audit(path)
    return {c: v for c, v in consensus_of(audit).items() if v is not None}


def error_rates(pairs: list[tuple[int, int]], shares: dict[str, float] | None) -> dict[str, Any]:
    """The filter's error rates from (predicted, expert) 0/1 pairs: per predicted class with
    Wilson intervals, unweighted, and (with the store's ``shares``) re-weighted to the store."""
    out: dict[str, Any] = {"n": len(pairs)}
    rates, sizes = [], []
    for name, cls in ((BLAST, 1), (NONBLAST, 0)):
        errs = [p != x for p, x in pairs if p == cls]
        k, n = sum(errs), len(errs)
        key = name.replace("-", "")
        out[f"{key}_error_rate"] = k / n if n else None
        out[f"{key}_ci"] = list(wilson_interval(k, n))
        out[f"n_{key}"] = n
        rates.append(k / n if n else 0.0)
        sizes.append(n)
    raw_k = sum(p != x for p, x in pairs)
    out["unweighted_error_rate"] = raw_k / len(pairs) if pairs else None
    out["unweighted_ci"] = list(wilson_interval(raw_k, len(pairs)))
    if shares is not None and pairs:
        est, ci, n_eff = stratified_proportion(rates, sizes, [shares[BLAST], shares[NONBLAST]])
        out.update({"error_rate": est, "ci": list(ci), "n_effective": n_eff})
    return out


def _unusable_share(audit: Audit, labels: dict[CellKey, str | None],
                    shares: dict[str, float] | None) -> dict[str, Any]:
    """Share of the answered cells called unusable, re-weighted to the store when stratified."""
    rates, sizes, k_all = [], [], 0
    for cls in (1, 0):
        answered = [c for c in audit.cells if labels[c] is not None and audit.predicted[c] == cls]
        k = sum(labels[c] == UNUSABLE for c in answered)
        k_all += k
        rates.append(k / len(answered) if answered else 0.0)
        sizes.append(len(answered))
    n = sum(sizes)
    out: dict[str, Any] = {"n_cells": k_all, "of": n, "unweighted_share": k_all / n if n else None}
    if shares is not None and n:
        est, ci, _ = stratified_proportion(rates, sizes, [shares[BLAST], shares[NONBLAST]])
        out.update({"share": est, "ci": list(ci)})
    return out


def _shares(audit: Audit, side: str) -> dict[str, float] | None:
    """The store's predicted-class shares for a stratified audit; None for other designs."""
    if audit.meta.get("strategy", "stratified") != "stratified":
        return None
    shares = audit.meta.get("predicted_share", {})
    if not {BLAST, NONBLAST} <= set(shares):
        raise CliError(f"{side}: lacks predicted_share for {BLAST} and {NONBLAST} (needed to "
                       "re-weight the stratified sample; written by 'audit STORE')")
    return shares


def _pairs(audit: Audit, labels: dict[CellKey, str | None]) -> list[tuple[int, int]]:
    return [(audit.predicted[c], int(labels[c] == BLAST)) for c in audit.cells
            if labels[c] in (BLAST, NONBLAST)]


def _rater_summary(audit: Audit, name: str, shares: dict[str, float] | None) -> dict[str, Any]:
    answers = audit.raters[name]
    labels: dict[CellKey, str | None] = {c: answers.get(c) for c in audit.cells}
    counts = {a: sum(v == a for v in answers.values()) for a in ANSWERS}
    return {"n_answered": len(answers), "counts": counts, **error_rates(_pairs(audit, labels),
            shares), "unusable": _unusable_share(audit, labels, shares)}


def _agreement(audit: Audit, n_boot: int, seed: int) -> dict[str, Any]:
    names = list(audit.raters)
    code = {a: i for i, a in enumerate(ANSWERS)}
    ratings = np.array([[code[audit.raters[r][c]] if c in audit.raters[r] else -1 for r in names]
                        for c in audit.cells], dtype=np.int64).reshape(len(audit.cells), len(names))
    res = agreement(ratings, len(ANSWERS), names, n_boot=n_boot, seed=seed)
    res["categories"] = list(ANSWERS)
    binary = ratings[np.isin(ratings, [code[BLAST], code[NONBLAST]]).all(axis=1)]
    res["binary"] = {k: v for k, v in agreement(binary, len(ANSWERS), names, n_boot=n_boot,
                                                seed=seed).items() if k != "raters"}
    if len(names) > 2:
        res["pairwise"] = pairwise(ratings, names)
    return res


def _latent(audit: Audit, shares: dict[str, float] | None, n_boot: int,
            seed: int) -> dict[str, Any]:
    """The rater-error-corrected error rates (:mod:`mil.blast.latent`)."""
    names = list(audit.raters)
    code = {BLAST: 1, NONBLAST: 0}
    answers = np.array([[code.get(audit.raters[r].get(c, ""), -1) for r in names]
                        for c in audit.cells], dtype=np.int64).reshape(len(audit.cells),
                                                                      len(names))
    strata = np.array([audit.predicted[c] for c in audit.cells], dtype=np.int64)
    sh = (shares[BLAST], shares[NONBLAST]) if shares else None
    return latent_error(strata, answers, sh, names, n_boot=n_boot, seed=seed)


def score_audit(path: Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Everything ``noise.json`` holds for an audit folder or review sheet."""
    audit = load_audit(path)
    side = str(_sheet_and_folder(path)[2])
    shares = _shares(audit, side)
    labels = consensus_of(audit)
    pairs = _pairs(audit, labels)
    if not pairs:
        raise CliError(f"{path}: no cell has a blast/non-blast consensus "
                       f"({len(audit.raters)} rater(s), {len(audit.cells)} cells)")
    tally = {k: sum(v == k for v in labels.values()) for k in (*ANSWERS, TIE)}
    res: dict[str, Any] = error_rates(pairs, shares)
    if shares is None:
        res["sample_error_rate"] = res["unweighted_error_rate"]
    res.update({
        "strategy": audit.meta.get("strategy", "stratified"), "predicted_share": shares,
        "raters": list(audit.raters), "n_sampled": len(audit.cells),
        "consensus": tally, "excluded_unsure": tally[UNSURE], "excluded_tie": tally[TIE],
        "skipped_empty": sum(v is None for v in labels.values()),
        "unusable": _unusable_share(audit, labels, shares),
        "agreement": _agreement(audit, n_boot, seed),
        "latent_class": _latent(audit, shares, n_boot, seed),
        "per_rater": {r: _rater_summary(audit, r, shares) for r in audit.raters},
        "sheet": str(_sheet_and_folder(path)[0]),
        "note": "error_rate: estimated fraction of cells whose predicted class is wrong, over "
                "the whole store (stratified sample re-weighted; consensus of the raters, "
                "unsure/tie/unusable cells excluded); use as the noise rate" if shares else
                "not a random sample of the store: sample_error_rate describes these cells "
                "only; draw a stratified audit for the store's error rate"})
    return res


def consensus_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the consensus table: cell, the filter's call, each answer, consensus."""
    audit = load_audit(path)
    labels = consensus_of(audit)
    names = list(audit.raters)
    rows = [[c[0], c[1], BLAST if audit.predicted[c] else NONBLAST,
             *(audit.raters[r].get(c, "") for r in names), labels[c] or ""] for c in audit.cells]
    return ["slide_id", "cell_id", "predicted", *names, "consensus"], rows


def apply_corrections(labels: dict[CellKey, int], path: Path) -> tuple[dict[CellKey, int],
                                                                       dict[str, int]]:
    """Labels with each reviewed cell's blast/non-blast consensus in place of (or added to)
    its given label; cells with an ``unusable`` consensus dropped; ties and ``unsure`` kept."""
    audit = load_audit(path)
    if any(c[0] == "row" for c in audit.cells):
        raise CliError(f"{path}: its sheet has no slide_id/cell_id columns to match the labels")
    out = dict(labels)
    tally = {"changed": 0, "confirmed": 0, "added": 0, "dropped_unusable": 0, "kept": 0}
    for cell, answer in consensus_of(audit).items():
        if answer in (BLAST, NONBLAST):
            y = int(answer == BLAST)
            tally["added" if cell not in out else "confirmed" if out[cell] == y else "changed"] += 1
            out[cell] = y
        elif answer == UNUSABLE:
            tally["dropped_unusable"] += out.pop(cell, None) is not None
        elif answer is not None:
            tally["kept"] += 1
    return out, tally


def score(path: Path, out: str | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Score an audit folder (or review sheet); write the noise-rate JSON and, beside it, the
    consensus table ``<name>.consensus.csv``."""
    result = score_audit(path, n_boot=n_boot)
    folder = path if path.is_dir() else path.parent
    dest = Path(out) if out else folder / "noise.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    header, rows = consensus_rows(path)
    with dest.with_suffix(".consensus.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    if result["skipped_empty"]:
        log.warning("warning: %d cell(s) without an answer skipped", result["skipped_empty"])
    agree = result["agreement"]
    if agree["kappa"] is not None:
        log.info("%s kappa %.3f [%.3f, %.3f] over %d cells answered by %s", agree["method"],
                 agree["kappa"], *(v if v is not None else float("nan") for v in agree["ci95"]),
                 agree["n_cells"], ", ".join(agree["raters"]))
    if "error_rate" in result:
        log.info("error rate %.3f [%.3f, %.3f] from %d reviewed cells -> %s",
                 result["error_rate"], *result["ci"], result["n"], dest)
    else:
        log.info("%s audit: error rate of the sampled cells %.3f from %d reviewed cells -> %s",
                 result["strategy"], result["sample_error_rate"], result["n"], dest)
    return result
