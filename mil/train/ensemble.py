"""Trained models that predict together: a run's final or fold models (or one fold), on any store.

Probabilities are the mean of the models' softmax; attention is averaged over them. The
instance-weight mode (and its threshold, prior strength, noise rate) is the run's; cells the
``filter`` mode drops get attention 0. A store whose features differ from the training store's
(:data:`mil.provenance.FEATURE_KEYS`) is refused. Checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mil.blast.cohort import MIN_COHORT_SLIDES
from mil.errors import CliError
from mil.provenance import check_same_features
from mil.store import BLAST_PROB, SlideId, open_store
from mil.train.data import BagDataset, BagSource, BucketBatchSampler, collate_bags
from mil.train.instance_weights import InstanceWeights, parse_noise_rate
from mil.train.lightning_module import MILSystem
from mil.train.standardise import source_moments, standardised, use_cohort_stats

log = logging.getLogger("mil")


@dataclass
class SlidePrediction:
    """The ensemble's output for one slide."""

    slide_id: SlideId
    probs: Any  # (C,) np.float32 (float64 once the run's decision rule is applied)
    attention: Any  # (N, K) np.float32 over all stored cells, fold mean
    cell_ids: list[str]
    paths: list[str]
    blast_prob: Any | None  # (N,) as stored (not tempered), None when absent
    classes: list[str]
    call: int = -1  # class index called by the run's decision rule (-1: not decided yet)
    calls: Any = None  # multilabel: 0/1 call per target (T,) by the run's rule; else None


def load_system(ckpt: str | Path) -> MILSystem:
    """A trained :class:`MILSystem` in eval mode, on CPU (``weights_only=True``).

    A truncated, corrupt or foreign file (another model's checkpoint, pickled code) is a
    one-line CliError naming it, whatever torch or Lightning raised.
    """
    if not Path(ckpt).is_file():
        raise CliError(f"checkpoint not found: {ckpt}")
    try:
        system = MILSystem.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling, key, shape and type errors alike
        why = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise CliError(f"{ckpt}: not a readable cellmil checkpoint ({type(err).__name__}: "
                       f"{why}); delete it and re-run mil.fit to train that fold again") from None
    return system.eval()


def run_weights(config: Mapping[str, Any]) -> InstanceWeights:
    """The instance weights a run was trained with, from its saved config."""
    return InstanceWeights(config.get("instance_weights", "none"),
                           config.get("filter_threshold", 0.5), config.get("prior_strength", 1.0),
                           parse_noise_rate(config.get("noise_rate")))


def run_models(systems: list[Any], source: Any, slide_ids: list[SlideId],
               batch_size: int = 8) -> dict[SlideId, tuple[Any, Any]]:
    """slide -> (probs (C,), attn (n_kept, K)), each the mean over ``systems``."""
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
    out = run_models([load_system(c) for c in ckpts], source, list(slide_ids))
    return np.stack([out[s][0] for s in slide_ids])


class Ensemble:
    """The models of ``ckpts`` with the run's instance weights; ``label`` says which they are.

    Models fitted with ``--standardise cohort`` take the mean/std of the store they predict
    (every cell the instance weights keep, :mod:`mil.train.standardise`) in :meth:`source`,
    unless it has fewer than ``MIN_COHORT_SLIDES`` slides; ``notes`` says how the features
    were standardised.
    """

    def __init__(self, ckpts: Sequence[str | Path], config: Mapping[str, Any], label: str = "") -> None:
        self.ckpts = [Path(c) for c in ckpts]
        self.systems = [load_system(c) for c in self.ckpts]
        self.hparams = self.systems[0].hparams
        self.classes: list[str] = list(self.hparams["classes"])
        self.weights = run_weights(config)
        self.label = label
        self.standardise = standardised(self.systems)
        self.applied = "none" if self.standardise == "none" else "train"  # set by source()
        self.notes: list[str] = []
        if self.standardise == "train":
            self.notes.append("standardisation: train (the training cells' mean/std, in the models)")

    def source(self, store: str | Path, slides: Sequence[SlideId] | None = None) -> BagSource:
        """The bags of ``slides`` (default: all) of ``store``, checked against the training features."""
        st = open_store(store)
        check_same_features(self.hparams.get("provenance") or {}, st.attrs, store,
                            owner="the run")
        slides = list(slides) if slides else st.slides()
        if not slides:
            raise CliError(f"{store}: no slides to predict")
        missing = [s for s in slides if s not in st]
        if missing:
            raise CliError(f"{store}: no slide(s) {', '.join(missing[:5])}")
        if self.standardise == "cohort":
            self._standardise_on(store, st.slides())
        return BagSource(store, slides, self.weights, stream=True)

    def _standardise_on(self, store: str | Path, cohort: list[SlideId]) -> None:
        """Cohort standardisation: the mean/std of ``cohort``'s kept cells, or the training
        statistics (restored) when it has fewer than ``MIN_COHORT_SLIDES`` slides."""
        if not hasattr(self, "_train_stats"):
            self._train_stats = [(s.model.norm.mean.clone(), s.model.norm.std.clone())
                                 for s in self.systems]
        if len(cohort) < MIN_COHORT_SLIDES:
            log.warning("warning: %s has %d slide(s), fewer than %d to re-estimate the feature "
                        "mean/std from; the models' training statistics are used",
                        store, len(cohort), MIN_COHORT_SLIDES)
            for s, (mean, std) in zip(self.systems, self._train_stats, strict=True):
                s.model.norm.set_stats(mean, std)
            self.applied = "train"
            self.notes = [f"standardisation: train (--standardise cohort, but {store} has only "
                          f"{len(cohort)} slide(s); the training cells' mean/std kept)"]
            return
        stats = source_moments(BagSource(store, cohort, self.weights, stream=True), cohort)
        use_cohort_stats(self.systems, stats.mean, stats.std)
        self.applied = "cohort"
        self.notes = [f"standardisation: cohort (mean/std re-estimated on the {stats.n} "
                      f"cells of the {len(cohort)} slides of {store})"]

    def predict(self, source: BagSource, batch_size: int = 8) -> list[SlidePrediction]:
        """Every slide of ``source``, attention spread back over all its stored cells."""
        slides = list(source.rows)
        out = run_models(self.systems, source, slides, batch_size)
        st, results = source.store, []
        for sid in slides:
            probs, attn = out[sid]  # (C,), (n_kept, K)
            rows = source.rows[sid]
            full = np.zeros((st.n_cells(sid), attn.shape[1]), dtype=np.float32)  # (N, K)
            full[rows if rows is not None else slice(None)] = attn
            results.append(SlidePrediction(sid, probs, full, st.strings(sid, "cell_ids"),
                                           st.strings(sid, "paths"), st.annotation(sid, BLAST_PROB),
                                           self.classes))
        return results
