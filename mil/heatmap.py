"""Attention export per slide: attention.csv, gallery.png, mosaic.png, map.png and an index.html.

    python -m mil.heatmap RUN_DIR --store STORE --out DIR [--source ROOT] [--slides A,B]
        [--top-k 16] [--norm rank|minmax|raw] [--occlusion] [--labels slides.csv]

Each slide gets ``DIR/<file_name(slide_id)>/`` (safe for any id: ``../../x`` stays inside DIR).
The map explains the predicted class: its own branch for multi-branch models, the shared
attention for single-branch ones; which one, and the normalisation, are written on every image.
Default ``--norm rank`` colours by within-slide percentile, so maps always use the full scale.
Missing cell images become marked placeholders and are counted, never a crash.

The core, :func:`export_slide`, takes plain arrays, so it is usable without a trained run.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mil.errors import CliError

log = logging.getLogger("mil.heatmap")

NORMS = {
    "rank": ("0th pct", "100th pct", "attention percentile within the slide (norm: rank)"),
    "minmax": ("slide min", "slide max", "attention, min-max within the slide (norm: minmax)"),
    "raw": ("0", "1", "raw attention weight, fixed 0-1 scale (norm: raw)"),
}


def normalise(attn: np.ndarray, mode: str) -> np.ndarray:
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

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    def explained(self) -> tuple[np.ndarray, str]:
        """The attention (N,) that explains the prediction, and a sentence saying which."""
        k = self.attention.shape[1]
        pred = self.classes[self.predicted]
        if k == len(self.classes) and k > 1:
            return self.attention[:, self.predicted], (
                f"explains: the '{pred}' branch (predicted class) of a {k}-branch model")
        return self.attention[:, 0], (
            f"explains: the shared attention of a single-branch model (same for every class; "
            f"predicted '{pred}')")


@dataclass
class SlideExport:
    """What was written for one slide (one row of the index)."""

    slide_id: str
    folder: str
    truth: str | None
    prediction: str
    probability: float
    n_cells: int
    n_missing: int
    files: dict[str, str] = field(default_factory=dict)  # kind -> file name in the folder


def slide_folder(out: Path, slide_id: str) -> Path:
    """``out/<safe name>``, guaranteed to be a direct child of ``out``."""
    from mil.store import file_name

    name = file_name(slide_id)
    if name in (".", "..") or "/" in name or "\\" in name:  # cannot happen; belt and braces
        raise CliError(f"slide id {slide_id!r} cannot be made a safe folder name")
    return out / name


def write_table(path: Path, sa: SlideAttention, explained: np.ndarray, ok: np.ndarray) -> None:
    """attention.csv: one row per cell in store order."""
    multi = sa.attention.shape[1] > 1
    head = ["cell_id", "path", "attention"]
    head += [f"attention_{c}" for c in sa.classes] if multi else []
    head += ["rank", "percentile"]
    head += ["blast_prob"] if sa.blast_prob is not None else []
    head += ["occlusion_delta"] if sa.occlusion is not None else []
    head += ["image_ok"]
    rk, pct = ranks(explained), percentiles(explained)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        for i, cid in enumerate(sa.cell_ids):
            row: list[Any] = [cid, sa.paths[i], f"{explained[i]:.8g}"]
            row += [f"{v:.8g}" for v in sa.attention[i]] if multi else []
            row += [int(rk[i]), f"{pct[i]:.3f}"]
            row += [f"{sa.blast_prob[i]:.6g}"] if sa.blast_prob is not None else []
            row += [f"{sa.occlusion[i]:.6g}"] if sa.occlusion is not None else []
            w.writerow([*row, int(ok[i])])


def _title(sa: SlideAttention, what: str, norm: str, n_missing: int) -> list[str]:
    pred = sa.classes[sa.predicted]
    truth = sa.truth if sa.truth else "unknown"
    mark = "" if not sa.truth else ("  (correct)" if sa.truth == pred else "  (WRONG)")
    lines = [f"slide {sa.slide_id}  -  {what}",
             f"prediction {pred}  p = {sa.probs[sa.predicted]:.3f}  |  truth {truth}{mark}",
             sa.explained()[1],
             *([sa.models] if sa.models else []),
             f"colour: {NORMS[norm][2]}  |  {len(sa.cell_ids)} cells",
             _spread(sa.explained()[0])]
    if n_missing:
        lines.append(f"{n_missing} cell image(s) missing or unreadable (grey tiles marked X)")
    return lines


def _spread(a: np.ndarray) -> str:
    """The raw attention range against uniform, so a rank-coloured flat map is recognisable."""
    n = max(1, len(a))
    return (f"attention weights {a.min(initial=np.inf):.3g} to {a.max(initial=-np.inf):.3g} "
            f"(uniform would be {1 / n:.3g}; max/uniform = {a.max(initial=0.0) * n:.1f}x)")


def _captions(sa: SlideAttention, i: int, a: np.ndarray, rk: np.ndarray, pct: np.ndarray) -> tuple[str, ...]:
    lines = [f"#{rk[i]} a={a[i]:.3g}", f"pct {pct[i]:.0f}"]
    if sa.blast_prob is not None:
        lines[1] += f" blast {sa.blast_prob[i]:.2f}"
    if sa.occlusion is not None:
        lines.append(f"dp {sa.occlusion[i]:+.3f}")
    return tuple(lines)


def export_slide(sa: SlideAttention, out: Path, *, source: Path | None = None, top_k: int = 16,
                 norm: str = "rank", tile: int = 96) -> SlideExport:
    """Write attention.csv, gallery.png, mosaic.png (and map.png with coords) for one slide."""
    from mil import render

    if sa.attention.ndim != 2 or sa.attention.shape[0] != len(sa.cell_ids):
        raise ValueError(f"slide {sa.slide_id}: attention {sa.attention.shape} for "
                         f"{len(sa.cell_ids)} cells")
    folder = slide_folder(out, sa.slide_id)
    folder.mkdir(parents=True, exist_ok=True)
    a, _ = sa.explained()
    values = normalise(a, norm)  # (N,)
    order = np.argsort(-a, kind="stable")  # highest attention first
    rk, pct = ranks(a), percentiles(a)
    files = [(source / p) if source is not None else Path(p) for p in sa.paths]
    m_size, m_border = render.mosaic_tile_size(len(order))
    small, ok = [], np.zeros(len(order), bool)
    for i in order:
        t, ok[i] = render.load_tile(files[i], m_size)
        small.append(t)
    n_missing = int((~ok).sum())
    scale = NORMS[norm]
    top = [int(i) for i in order[:top_k]]
    bottom = [int(i) for i in order[max(len(top), len(order) - top_k):]][::-1]
    sections = [(f"top {len(top)}: highest attention", top),
                (f"bottom {len(bottom)}: lowest attention (lowest first)", bottom)]
    specs = [(h, [render.TileSpec(render.load_tile(files[i], tile)[0], float(values[i]),
                                  _captions(sa, i, a, rk, pct)) for i in idx])
             for h, idx in sections]
    render.gallery(_title(sa, "cell gallery", norm, n_missing), specs, scale).save(folder / "gallery.png")
    grid = render.mosaic_grid(small, values[order], m_border)
    head = render.text_block([*_title(sa, "attention mosaic", norm, n_missing),
                              "every cell, ordered by attention: highest top-left, row by row"],
                             max(grid.width, 640))
    render.stack([head, grid, render.colour_bar(min(head.width, 640), *scale)]).save(folder / "mosaic.png")
    names = {"gallery": "gallery.png", "mosaic": "mosaic.png", "table": "attention.csv"}
    if sa.coords is not None:
        cmap = render.cell_map(sa.coords, values)
        head = render.text_block([*_title(sa, "cell map", norm, n_missing),
                                  "cells at their stored (x, y), y pointing down; high on top"], cmap.width)
        render.stack([head, cmap, render.colour_bar(cmap.width, *scale)]).save(folder / "map.png")
        names["map"] = "map.png"
    grid.thumbnail((160, 160))
    grid.save(folder / "thumb.png")
    names["thumb"] = "thumb.png"
    write_table(folder / "attention.csv", sa, a, ok)
    if n_missing:
        first = files[int(np.flatnonzero(~ok)[0])]
        log.warning("slide %s: %d of %d cell images missing or unreadable (first: %s); drawn as "
                    "placeholders - pass --source if the images moved", sa.slide_id, n_missing,
                    len(ok), first)
    return SlideExport(sa.slide_id, folder.name, sa.truth, sa.classes[sa.predicted],
                       float(sa.probs[sa.predicted]), len(ok), n_missing, names)


def source_root(store_attrs: dict[str, Any], override: str | Path | None) -> Path | None:
    """Where the store's relative cell paths start: ``--source``, else what extraction recorded."""
    if override is not None:
        root = Path(override)
        if not root.is_dir():
            raise CliError(f"--source {root} is not a folder")
        return root
    cfg = store_attrs.get("config")
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            cfg = None
    for value in (store_attrs.get("source_root"), store_attrs.get("source"),
                  (cfg or {}).get("source") if isinstance(cfg, dict) else None):
        if isinstance(value, str) and value:
            p = Path(value)
            return p.parent if p.is_file() else p  # a manifest's paths start at its folder
    return None


def read_labels(path: str | Path | None) -> dict[str, str]:
    """slide_id -> label from a ``slide_id,label`` CSV (empty without one)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise CliError(f"labels file not found: {p}")
    with p.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"slide_id", "label"} <= set(rows[0]):
        raise CliError(f"{p}: needs columns slide_id,label")
    return {r["slide_id"]: r["label"] for r in rows}


def write_summary(out: Path, rows: list[SlideExport]) -> Path:
    """summary.csv: one line per exported slide (what index.html shows)."""
    path = out / "summary.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "folder", "truth", "prediction", "probability", "n_cells",
                    "n_missing_images"])
        for r in rows:
            w.writerow([r.slide_id, r.folder, r.truth or "", r.prediction, f"{r.probability:.6f}",
                        r.n_cells, r.n_missing])
    return path


# -- a trained run -> SlideAttention -------------------------------------------------------
@dataclass
class ModelGroup:
    """Checkpoints that explain some slides, and a sentence saying which models they are."""

    ckpts: list[Path]
    slides: list[str]
    label: str


def model_groups(run_dir: Path, store: Path, slides: list[str]) -> list[ModelGroup]:
    """Out-of-fold where possible: a slide of the run's own store that was in fold k's test part
    is explained by fold k's model alone (the model that never saw it, as in predictions.csv);
    every other slide by the ensemble of all folds."""
    from mil.config import load_yaml
    from mil.splits import load_splits

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CliError(f"{run_dir} is not a mil.fit run folder (no config.yaml)")
    ckpts = {int(c.parent.name.split("_")[-1]): c for c in run_dir.glob("fold_*/best.ckpt")}
    if not ckpts:
        raise CliError(f"{run_dir}: no fold_*/best.ckpt; has mil.fit finished a fold?")
    own = str(load_yaml(cfg_path).get("store") or "")
    test_fold: dict[str, int] = {}
    if (run_dir / "splits.json").is_file() and own and Path(own).resolve() == store.resolve():
        folds, _ = load_splits(run_dir / "splits.json")
        test_fold = {s: k for k, f in enumerate(folds) for s in f.test if k in ckpts}
    groups = [ModelGroup([ckpts[k]], [s for s in slides if test_fold.get(s) == k],
                         f"model: fold {k} only (out-of-fold: the slide was in its test part)")
              for k in sorted(ckpts)]
    rest = [s for s in slides if s not in test_fold]
    groups.append(ModelGroup([ckpts[k] for k in sorted(ckpts)], rest,
                             f"model: mean of the {len(ckpts)} fold models"))
    return [g for g in groups if g.slides]


def explain_group(run_dir: Path, store: Path, group: ModelGroup, *, occlusion: bool,
                  batch_size: int = 8) -> list[tuple[Any, np.ndarray | None]]:
    """(SlidePrediction, occlusion deltas (N,) or None) per slide of ``group``; the same bag
    preparation (instance weights of the run) as :func:`mil.predict.predict_slides`."""
    from mil.config import load_yaml
    from mil.data import BagSource
    from mil.occlusion import system_occlusion
    from mil.predict import SlidePrediction, check_store, load_system, run_models
    from mil.store import open_store
    from mil.weights import InstanceWeights, parse_noise_rate

    cfg = load_yaml(run_dir / "config.yaml")
    systems = [load_system(c) for c in group.ckpts]
    hp = systems[0].hparams
    st = open_store(store)
    check_store(st, hp.get("provenance") or {}, store)
    weights = InstanceWeights(cfg.get("instance_weights", "none"), cfg.get("filter_threshold", 0.5),
                              cfg.get("prior_strength", 1.0), parse_noise_rate(cfg.get("noise_rate")))
    source = BagSource(store, group.slides, weights, stream=True)
    out = run_models(systems, source, group.slides, batch_size)
    results = []
    for sid in group.slides:
        probs, attn = out[sid]  # (C,), (n_kept, K)
        n, rows = st.n_cells(sid), source.rows[sid]
        keep = rows if rows is not None else slice(None)
        full = np.zeros((n, attn.shape[1]), np.float32)  # (N, K); dropped cells get 0
        full[keep] = attn
        occ = None
        if occlusion:
            occ = np.zeros(n)  # a cell the model never saw changes nothing
            occ[keep] = system_occlusion(systems, *source.get(sid), int(np.argmax(probs)))
        results.append((SlidePrediction(sid, probs, full, st.strings(sid, "cell_ids"),
                                        st.strings(sid, "paths"), st.annotation(sid, "blast_prob"),
                                        list(hp["classes"])), occ))
    return results


def truths(run_dir: Path, labels: str | Path | None) -> dict[str, str]:
    """True labels: ``--labels`` if given, else the run's own predictions.csv truth column."""
    if labels is not None:
        return read_labels(labels)
    p = run_dir / "predictions.csv"
    if not p.is_file():
        return {}
    with p.open(newline="", encoding="utf-8") as fh:
        return {r["slide_id"]: r["truth"] for r in csv.DictReader(fh) if r.get("truth")}


@dataclass
class HeatmapOptions:
    """What ``python -m mil.heatmap`` (and ``mil.predict --attention``) export."""

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
    from mil.config import load_yaml
    from mil.report import write_index
    from mil.store import open_store

    opts = opts or HeatmapOptions()
    run_dir, out = Path(run_dir), Path(out)
    normalise(np.zeros(1), opts.norm)  # reject a bad --norm before any work
    if not (run_dir / "config.yaml").is_file():
        raise CliError(f"{run_dir} is not a mil.fit run folder (no config.yaml)")
    store = Path(store or load_yaml(run_dir / "config.yaml").get("store") or "")
    st = open_store(store)
    root = source_root(st.attrs, opts.source)
    slides = opts.slides or st.slides()
    unknown = [s for s in slides if s not in st]
    if unknown:
        raise CliError(f"{store}: no slide(s) {', '.join(unknown[:5])}")
    truth = truths(run_dir, opts.labels)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[SlideExport] = []
    for group in model_groups(run_dir, store, slides):
        for pred, occ in explain_group(run_dir, store, group, occlusion=opts.occlusion,
                                       batch_size=opts.batch_size):
            sa = SlideAttention(pred.slide_id, pred.classes, pred.probs, pred.attention,
                                pred.cell_ids, pred.paths, truth.get(pred.slide_id),
                                st.read(pred.slide_id).coords, pred.blast_prob, occ,
                                models=group.label)
            rows.append(export_slide(sa, out, source=root, top_k=opts.top_k, norm=opts.norm))
    order = {s: i for i, s in enumerate(slides)}
    rows.sort(key=lambda r: order[r.slide_id])
    write_summary(out, rows)
    missing = sum(r.n_missing for r in rows)
    notes = [f"run {run_dir.resolve()}; store {store.resolve()}; images under {root or '.'}",
             f"colour: {NORMS[opts.norm][2]}; top/bottom {opts.top_k} cells per gallery",
             f"{missing} cell image(s) missing in total" if missing else "every cell image found"]
    write_index(out, rows, title=f"cellmil attention: {run_dir.name}", notes=notes)
    return rows


# -- CLI -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mil.heatmap",
                                description="Per-slide attention tables, galleries, mosaics, maps "
                                            "and an offline index.html from a mil.fit run.")
    p.add_argument("run_dir", type=Path, help="a mil.fit run folder")
    p.add_argument("--store", type=Path, help="bag store of the slides (default: the run's)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (one sub-folder per slide)")
    p.add_argument("--source", help="root of the cell images, if they moved since extraction "
                                    "(default: the source recorded in the store)")
    p.add_argument("--slides", help="comma-separated slide ids (default: all in the store)")
    p.add_argument("--top-k", type=int, default=16, help="cells in each gallery row (default: 16)")
    p.add_argument("--norm", choices=list(NORMS), default="rank",
                   help="colour scale: rank = within-slide percentile (default), minmax, raw")
    p.add_argument("--occlusion", action="store_true",
                   help="also leave each cell out and record the predicted class's probability drop")
    p.add_argument("--labels", type=Path, help="slide_id,label CSV of true labels "
                                               "(default: the run's predictions.csv)")
    p.add_argument("--batch-size", type=int, default=8, help="bags per forward pass")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    from mil.cli import run_cli, setup_logging, split_ids

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        if args.top_k < 1:
            raise CliError("--top-k must be at least 1")
        opts = HeatmapOptions(args.source, split_ids(args.slides),
                              args.top_k, args.norm, args.occlusion, args.labels, args.batch_size)
        rows = export_run(args.run_dir, args.store, args.out, opts)
        missing = sum(r.n_missing for r in rows)
        print(f"exported {len(rows)} slide(s) -> {args.out / 'index.html'}"
              + (f" ({missing} cell images missing, drawn as placeholders)" if missing else ""))
        return 0

    return run_cli(body, "mil.heatmap")


if __name__ == "__main__":
    raise SystemExit(main())
