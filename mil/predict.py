"""python -m mil.predict: the fold models of a run as an ensemble on new slides.

    python -m mil.predict runs/r1 --store features/new.h5 --out preds.csv --attention attn/

Probabilities are the mean of the folds' softmax; attention is averaged over folds. The
instance-weight mode (and its threshold, prior strength, noise rate) is the run's, read from
``RUN_DIR/config.yaml``; cells the ``filter`` mode drops get attention 0. A store made with
another backbone, weights or feature dim than the run's is refused. Checkpoints are loaded
with ``weights_only=True``.

:func:`predict_slides` is the Python entry point (the heatmap export reuses it).
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mil.cli import run_cli, setup_logging, split_ids
from mil.errors import CliError
from mil.store import SlideId


@dataclass
class SlidePrediction:
    """The ensemble's output for one slide."""

    slide_id: SlideId
    probs: Any  # (C,) np.float32
    attention: Any  # (N, K) np.float32 over all stored cells, fold mean
    cell_ids: list[str]
    paths: list[str]
    blast_prob: Any | None  # (N,) as stored (not tempered), None when absent
    classes: list[str]


def load_system(ckpt: str | Path) -> Any:
    """A trained :class:`mil.system.MILSystem` in eval mode, on CPU (``weights_only=True``)."""
    from mil.system import MILSystem

    if not Path(ckpt).is_file():
        raise CliError(f"checkpoint not found: {ckpt}")
    return MILSystem.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True).eval()


def check_store(store: Any, provenance: dict[str, Any], where: str | Path) -> None:
    """Refuse a store whose backbone, weights or feature dim differ from the run's."""
    attrs = store.attrs
    for key in ("feature_dim", "backbone", "weights_sha256"):
        want, got = provenance.get(key), attrs.get(key)
        if want is not None and got != want:
            raise CliError(f"{where}: {key} {got!r} differs from the run's {want!r}; "
                           "use features extracted as for training")


def run_models(systems: list[Any], source: Any, slide_ids: list[SlideId],
               batch_size: int = 8) -> dict[SlideId, tuple[Any, Any]]:
    """slide -> (probs (C,), attn (n_kept, K)), each the mean over ``systems``."""
    import torch

    from mil.data import BagDataset, BucketBatchSampler, collate_bags

    ds = BagDataset(source, slide_ids)
    batches = list(BucketBatchSampler(ds.lengths(), batch_size))
    sums: dict[int, list[Any]] = {}
    with torch.inference_mode():
        for idx in batches:
            batch = collate_bags([ds[i] for i in idx])
            for system in systems:
                for r in system.predict_step(batch):
                    acc = sums.setdefault(r["index"], [0.0, 0.0])
                    acc[0] = acc[0] + r["probs"]
                    acc[1] = acc[1] + r["attn"]
    m = len(systems)
    return {slide_ids[i]: ((p / m).numpy(), (a / m).numpy()) for i, (p, a) in sums.items()}


def ensemble_probs(ckpts: list[Path], source: Any, slide_ids: list[SlideId]) -> Any:
    """(n, C) mean softmax of the checkpoints over ``slide_ids`` (in that order)."""
    import numpy as np

    out = run_models([load_system(c) for c in ckpts], source, list(slide_ids))
    return np.stack([out[s][0] for s in slide_ids])


def _run_parts(run_dir: Path) -> tuple[dict[str, Any], list[Path]]:
    from mil.config import load_yaml

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CliError(f"{run_dir} is not a mil.fit run folder (no config.yaml)")
    ckpts = sorted(run_dir.glob("fold_*/best.ckpt"))
    if not ckpts:
        raise CliError(f"{run_dir}: no fold_*/best.ckpt; has mil.fit finished a fold?")
    return load_yaml(cfg_path), ckpts


def predict_slides(run_dir: str | Path, store: str | Path | None = None,
                   slides: list[SlideId] | None = None, batch_size: int = 8) -> list[SlidePrediction]:
    """The run's fold ensemble on ``slides`` (default: all) of ``store`` (default: the run's)."""
    import numpy as np

    from mil.data import BagSource
    from mil.store import open_store
    from mil.weights import InstanceWeights, parse_noise_rate

    cfg, ckpts = _run_parts(Path(run_dir))
    store = Path(store or cfg["store"])
    systems = [load_system(c) for c in ckpts]
    hp = systems[0].hparams
    st = open_store(store)
    check_store(st, hp.get("provenance") or {}, store)
    slides = list(slides) if slides else st.slides()
    if not slides:
        raise CliError(f"{store}: no slides to predict")
    missing = [s for s in slides if s not in st]
    if missing:
        raise CliError(f"{store}: no slide(s) {', '.join(missing[:5])}")
    weights = InstanceWeights(cfg.get("instance_weights", "none"), cfg.get("filter_threshold", 0.5),
                              cfg.get("prior_strength", 1.0), parse_noise_rate(cfg.get("noise_rate")))
    source = BagSource(store, slides, weights, stream=True)
    out = run_models(systems, source, slides, batch_size)
    results = []
    for sid in slides:
        probs, attn = out[sid]
        n, rows = st.n_cells(sid), source.rows[sid]
        full = np.zeros((n, attn.shape[1]), dtype=np.float32)  # (N, K)
        full[rows if rows is not None else slice(None)] = attn
        results.append(SlidePrediction(sid, probs, full, st.strings(sid, "cell_ids"),
                                       st.strings(sid, "paths"), st.annotation(sid, "blast_prob"),
                                       list(hp["classes"])))
    return results


def write_attention(pred: SlidePrediction, folder: Path) -> Path:
    """``folder/<encoded slide>.csv``: cell_id, path, attention per branch, blast_prob."""
    from mil.store import file_name

    folder.mkdir(parents=True, exist_ok=True)
    k = pred.attention.shape[1]
    names = ["attention"] if k == 1 else [f"attention_{c}" for c in pred.classes[:k]]
    path = folder / f"{file_name(pred.slide_id)}.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "path", *names, "blast_prob"])
        for i, cid in enumerate(pred.cell_ids):
            bp = "" if pred.blast_prob is None else f"{float(pred.blast_prob[i]):.6f}"
            w.writerow([cid, pred.paths[i], *(f"{a:.6g}" for a in pred.attention[i]), bp])
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mil.predict",
                                description="Predict slides with the fold ensemble of a mil.fit run.")
    p.add_argument("run_dir", type=Path, help="a mil.fit run folder")
    p.add_argument("--store", type=Path, help="bag store of the slides (default: the run's)")
    p.add_argument("--out", type=Path, required=True, help="predictions CSV to write")
    p.add_argument("--attention", type=Path, metavar="DIR", help="also write per-cell attention")
    p.add_argument("--slides", help="comma-separated slide ids (default: all in the store)")
    p.add_argument("--batch-size", type=int, default=8, help="bags per forward pass")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        slides = split_ids(args.slides)
        preds = predict_slides(args.run_dir, args.store, slides, args.batch_size)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["slide_id", "prediction", *(f"prob_{c}" for c in preds[0].classes)])
            for r in preds:
                w.writerow([r.slide_id, r.classes[int(r.probs.argmax())],
                            *(f"{p:.6f}" for p in r.probs)])
        for r in preds:
            if args.attention:
                write_attention(r, args.attention)
        print(f"predicted {len(preds)} slide(s) -> {args.out}")
        return 0

    return run_cli(body, "mil.predict")


if __name__ == "__main__":
    raise SystemExit(main())
