"""The bodies of ``python -m mil.blast fit | predict | audit`` (the CLI lives in :mod:`mil.blast`)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mil.errors import CliError
from mil.store import BLAST_PROB

if TYPE_CHECKING:
    from mil.blast import FitConfig
    from mil.store import BagStore

log = logging.getLogger("mil.blast")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- fit ---------------------------------------------------------------------------------------
def gather_labelled(store: BagStore, labels: dict[tuple[str, str], int], source: str,
                    allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (M, D) float32, labels (M,), slide index (M,)) of the labelled cells."""
    by_slide: dict[str, dict[str, int]] = {}
    for (sid, cid), y in labels.items():
        by_slide.setdefault(sid, {})[cid] = y
    absent_slides = sorted(s for s in by_slide if s not in store)
    xs, ys, gs, absent_cells = [], [], [], []
    for g, sid in enumerate(sorted(set(by_slide) - set(absent_slides))):
        row_of = {c: i for i, c in enumerate(store.strings(sid, "cell_ids"))}
        cells = sorted(by_slide[sid])
        absent_cells += [(sid, c) for c in cells if c not in row_of]
        cells = [c for c in cells if c in row_of]
        if not cells:
            continue
        rows = np.array([row_of[c] for c in cells])
        xs.append(store.features(sid, rows).astype(np.float32))
        ys.append(np.array([by_slide[sid][c] for c in cells], dtype=np.int64))
        gs.append(np.full(len(cells), g, dtype=np.int64))
    n_absent = len(absent_cells) + sum(len(by_slide[s]) for s in absent_slides)
    if n_absent:
        what = (f"{source}: {n_absent} of {len(labels)} labelled cells are not in {store.path} "
                f"({len(absent_slides)} absent slide(s)"
                + (f", e.g. '{absent_slides[0]}'" if absent_slides else "")
                + (f"; e.g. cell '{absent_cells[0][1]}' of slide '{absent_cells[0][0]}'"
                   if absent_cells else "") + ")")
        if not allow_missing:
            raise CliError(what + "; fix the labels or pass --allow-missing to skip them")
        log.warning("warning: %s; skipped", what)
    if not xs:
        raise CliError(f"{source}: none of the labelled cells is in {store.path}")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   cfg: FitConfig) -> dict[str, Any]:
    """Slide-grouped CV: out-of-fold logits, cross-fitted calibrated probs, temperature."""
    from mil.blast_model import (
        blast_probability,
        fit_temperature,
        grouped_folds,
        predict_logits,
        train_classifier,
    )

    folds = grouped_folds(groups, y, k=cfg.folds, seed=cfg.seed)
    oof = np.zeros((len(y), 2), dtype=np.float32)  # (M, 2)
    for f in range(cfg.folds):
        test = folds == f
        if len(np.unique(y[~test])) < 2:
            raise CliError(f"blast filter: fold {f} has one class only in its training slides; "
                           "lower --folds or label more slides")
        clf = train_classifier(x[~test], y[~test], **cfg.train_kwargs())
        oof[test] = predict_logits(clf, x[test])
        log.info("fold %d/%d: %d train, %d held-out cells", f + 1, cfg.folds,
                 int((~test).sum()), int(test.sum()))
    calibrated = np.zeros(len(y), dtype=np.float32)
    for f in range(cfg.folds):  # temperature for fold f fitted on the other folds' held-out cells
        test = folds == f
        calibrated[test] = blast_probability(oof[test], fit_temperature(oof[~test], y[~test]))
    return {"folds": folds, "oof_logits": oof, "calibrated": calibrated,
            "temperature": fit_temperature(oof, y)}


def cv_metrics(y: np.ndarray, probs: np.ndarray, raw: np.ndarray, groups: np.ndarray,
               n_boot: int, seed: int) -> dict[str, Any]:
    """Point estimates and 95% slide-level bootstrap intervals of the out-of-fold metrics."""
    from mil import stats

    pred = (probs >= 0.5).astype(np.int64)
    fns = {
        "accuracy": (stats.accuracy, (y, pred)),
        "balanced_accuracy": (stats.balanced_accuracy, (y, pred)),
        "auroc": (stats.auroc, (y, probs)),
        "ece": (lambda a, b: stats.expected_calibration_error(b, a), (y, probs)),
        "ece_uncalibrated": (lambda a, b: stats.expected_calibration_error(b, a), (y, raw)),
    }
    out: dict[str, Any] = {}
    for name, (fn, arrays) in fns.items():
        ci = stats.bootstrap_ci(fn, *arrays, n=n_boot, seed=seed, groups=groups) if n_boot \
            else (float("nan"), float("nan"))
        out[name] = {"value": float(fn(*arrays)), "ci": [ci[0], ci[1]]}
    return out


def fit(cfg: FitConfig) -> dict[str, Any]:
    """Cross-validate, fit the temperature, train on all labelled cells and save the filter."""
    from mil.blast import read_cell_labels
    from mil.blast_model import blast_probability, save_filter, store_provenance, train_classifier
    from mil.config import config_dict
    from mil.store import open_store

    labels = read_cell_labels(cfg.labels)  # type: ignore[arg-type]
    with open_store(cfg.store, "r") as store:  # type: ignore[arg-type]
        attrs = store.attrs
        x, y, groups = gather_labelled(store, labels, str(cfg.labels), cfg.allow_missing)
    log.info("%d labelled cells (%d blast) on %d slides, %d dims", len(y), int(y.sum()),
             len(np.unique(groups)), x.shape[1])
    cv = cross_validate(x, y, groups, cfg)
    raw = blast_probability(cv["oof_logits"])
    metrics = cv_metrics(y, cv["calibrated"], raw, groups, cfg.bootstrap, cfg.seed)
    metrics.update({"n_cells": int(len(y)), "n_blast": int(y.sum()),
                    "n_slides": int(len(np.unique(groups))), "folds": cfg.folds,
                    "temperature": cv["temperature"], "loss": cfg.loss, "model": cfg.model,
                    "labels": "given (possibly noisy) cell labels, out-of-fold",
                    "ci": "95% percentile bootstrap over slides"})
    clf = train_classifier(x, y, **cfg.train_kwargs())
    out = Path(cfg.out)  # type: ignore[arg-type]
    sha = save_filter(out, clf, temperature=cv["temperature"],
                      provenance=store_provenance(attrs, str(cfg.store)),
                      metrics=metrics, config=config_dict(cfg), created=_now())
    metrics["filter_sha256"] = sha
    out.with_suffix(".metrics.json").write_text(json.dumps(metrics, indent=1) + "\n",
                                                encoding="utf-8")
    return metrics


def metrics_text(m: dict[str, Any]) -> str:
    """One line per metric: value [lo, hi]."""
    lines = [f"{m['n_cells']} cells ({m['n_blast']} blast) on {m['n_slides']} slides, "
             f"{m['folds']}-fold slide-grouped CV, loss={m['loss']}, T={m['temperature']:.3f}"]
    for k in ("accuracy", "balanced_accuracy", "auroc", "ece", "ece_uncalibrated"):
        lo, hi = m[k]["ci"]
        lines.append(f"  {k:18s} {m[k]['value']:.3f}  [{lo:.3f}, {hi:.3f}]")
    return "\n".join(lines)


# -- predict -----------------------------------------------------------------------------------
def predict(store_path: str, filter_path: str, overwrite: bool = False) -> dict[str, int]:
    """Write calibrated ``blast_prob`` for every slide; skip slides done by the same filter."""
    from mil.blast_model import blast_probability, check_provenance, load_filter, predict_logits
    from mil.store import open_store

    clf, meta = load_filter(filter_path)
    with open_store(store_path, "a") as store:
        check_provenance(meta["provenance"], store.attrs, store_path)
        todo, done, other = [], 0, []
        for sid in store.slides():
            if BLAST_PROB in store.annotations(sid):
                if store.annotation_attrs(sid, BLAST_PROB).get("filter_sha256") == meta["sha256"]:
                    done += 1
                    continue
                other.append(sid)
            todo.append(sid)
        if other and not overwrite:
            raise CliError(f"{len(other)} slide(s) of {store_path} (e.g. '{other[0]}') carry "
                           f"{BLAST_PROB} from another filter; pass --overwrite to replace them")
        attrs = {"filter_sha256": meta["sha256"], "filter": str(filter_path),
                 "temperature": float(meta["temperature"]), "created": _now()}
        log.info("%d slides: %d already done, %d to predict", done + len(todo), done, len(todo))
        step = max(1, len(todo) // 20)
        for i, sid in enumerate(todo, start=1):
            probs = blast_probability(predict_logits(clf, store.features(sid)),
                                      float(meta["temperature"]))  # (N,)
            store.write_annotation(sid, BLAST_PROB, probs.astype(np.float32), attrs)
            if i % step == 0 or i == len(todo):
                log.info("[%d/%d] %s: %d cells", i, len(todo), sid, len(probs))
    return {"done": done, "written": len(todo), "replaced": len(other)}


# -- audit -------------------------------------------------------------------------------------
def _source_root(attrs: dict[str, Any], source: str | None, store_path: str) -> Path | None:
    """The root cell paths are relative to: --source, else what extract recorded
    (``source_root``, else the ``source`` of its config: a folder, or a manifest's folder)."""
    if source:
        return Path(source)
    config = attrs.get("config")
    config = config if isinstance(config, dict) else {}
    for val in (attrs.get("source_root"), config.get("source")):
        if isinstance(val, str) and val:
            p = Path(val)
            return p.parent if p.suffix.lower() == ".csv" else p
    log.warning("warning: %s records no source root and no --source was given; "
                "images are looked up relative to the working directory", store_path)
    return None


def audit(store_path: str, n: int, out: Path, seed: int = 0, source: str | None = None) -> Path:
    """Sample ``n`` cells stratified by predicted class; write review.csv(+.json) and gallery."""
    from mil.audit import (
        BLAST,
        NONBLAST,
        SampledCell,
        stratified_sample,
        write_gallery,
        write_sheet,
    )
    from mil.store import open_store

    if n < 1:
        raise CliError(f"--n must be at least 1, got {n}")
    with open_store(store_path, "r") as store:
        slides = store.slides()
        lacking = [s for s in slides if BLAST_PROB not in store.annotations(s)]
        if lacking or not slides:
            raise CliError(f"{len(lacking)} of {len(slides)} slide(s) of {store_path} lack "
                           f"{BLAST_PROB}; run 'python -m mil.blast predict' first")
        probs = [np.asarray(store.annotation(s, BLAST_PROB), dtype=np.float64) for s in slides]
        shas = sorted({str(store.annotation_attrs(s, BLAST_PROB).get("filter_sha256"))
                       for s in slides})
        picks = stratified_sample(probs, n, seed)
        cache: dict[int, tuple[list[str], list[str]]] = {}
        cells = []
        for row, (si, ci) in enumerate(picks, start=1):
            if si not in cache:
                cache[si] = (store.strings(slides[si], "cell_ids"), store.strings(slides[si], "paths"))
            cells.append(SampledCell(row, slides[si], cache[si][0][ci], cache[si][1][ci],
                                     float(probs[si][ci])))
        root = _source_root(store.attrs, source, store_path)
    flat = np.concatenate(probs)
    n_blast = int((flat >= 0.5).sum())
    meta: dict[str, Any] = {"store": str(store_path), "seed": seed, "n_requested": n, "n_sampled": len(cells),
            "n_cells": int(flat.size), "predicted_count": {BLAST: n_blast, NONBLAST: int(flat.size) - n_blast},
            "predicted_share": {BLAST: n_blast / flat.size, NONBLAST: 1 - n_blast / flat.size},
            "sampled_count": {BLAST: sum(c.predicted == BLAST for c in cells),
                              NONBLAST: sum(c.predicted == NONBLAST for c in cells)},
            "filter_sha256": shas, "source_root": str(root) if root else None, "created": _now(),
            "design": "stratified by predicted class (blast_prob >= 0.5), equal allocation"}
    sheet = write_sheet(out, cells, meta)
    g = write_gallery(out, cells, root)
    log.info("%d cells sampled (%d predicted blast) -> %s; gallery: %d sheet(s), %d image(s) "
             "missing", len(cells), meta["sampled_count"][BLAST], sheet, g["sheets"], g["missing"])
    return sheet


def score(sheet: Path, out: str | None = None) -> dict[str, Any]:
    """Score a filled review sheet and write the noise-rate JSON."""
    from mil.audit import score_review

    result = score_review(sheet)
    dest = Path(out) if out else sheet.with_name("noise.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if result["skipped_empty"]:
        log.warning("warning: %d row(s) without an expert label skipped", result["skipped_empty"])
    log.info("error rate %.3f [%.3f, %.3f] from %d reviewed cells -> %s", result["error_rate"],
             *result["ci"], result["n"], dest)
    return result
