"""The run folder ``mil.fit`` writes and ``mil.predict`` / ``mil.heatmap`` read.

    RUN/config.yaml         the resolved FitConfig
    RUN/splits.json         patient-grouped folds
    RUN/fold_K/best.ckpt    fold K's model (+ metrics.json, predictions.csv, logs)
    RUN/final/seed_K/model.ckpt, RUN/final/final.json   the models for new slides
    RUN/calibration.json    the decision rule; RUN/baselines/  the baselines
    RUN/conformal.json      out-of-fold nonconformity scores; RUN/reliability.png
    RUN/predictions.csv     out-of-fold predictions; RUN/metrics.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mil.config import load_yaml
from mil.errors import CliError
from mil.train.splits import Fold, load_splits

FINAL = "final"  # the folder of the final models (mil.train.final)
MODEL_CHOICES = ("auto", "final", "folds")


class RunDir:
    """A finished (or partly finished) ``mil.fit`` run; every accessor checks what it reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.yaml").is_file():
            raise CliError(f"{self.path} is not a mil.fit run folder (no config.yaml)")
        self._config: dict[str, Any] | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The run's resolved config (as saved)."""
        if self._config is None:
            self._config = load_yaml(self.path / "config.yaml")
        return self._config

    @property
    def store(self) -> Path:
        """The bag store the run was trained on."""
        return Path(self.config.get("store") or "")

    def fold_checkpoints(self) -> dict[int, Path]:
        """fold index -> best.ckpt of every finished fold (at least one, else a CliError)."""
        ckpts = {int(c.parent.name.split("_")[-1]): c for c in self.path.glob("fold_*/best.ckpt")}
        if not ckpts:
            raise CliError(f"{self.path}: no fold_*/best.ckpt; has mil.fit finished a fold?")
        return dict(sorted(ckpts.items()))

    def final_models(self) -> tuple[list[Path], dict[str, Any]] | None:
        """The final models listed by ``final/final.json`` (None when the run has none)."""
        doc_path = self.path / FINAL / "final.json"
        if not doc_path.is_file():
            return None
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        ckpts = [self.path / c for c in doc["checkpoints"]]
        missing = [str(c) for c in ckpts if not c.is_file()]
        if missing:
            raise CliError(f"{doc_path} lists missing checkpoint(s): {', '.join(missing[:3])}")
        return ckpts, doc

    def models(self, which: str = "auto") -> tuple[list[Path], str]:
        """(checkpoints, a sentence saying which) for new slides: ``auto`` = the final models
        when the run has them, else the fold models; ``final`` or ``folds`` ask for one."""
        if which not in MODEL_CHOICES:
            raise CliError(f"--models must be one of {', '.join(MODEL_CHOICES)}, got {which!r}")
        final = self.final_models() if which != "folds" else None
        if final is not None:
            ckpts, doc = final
            return ckpts, (f"models: final ensemble of {len(ckpts)} seed(s), trained on all "
                           f"{doc['n_slides']} labelled slides for {doc['epochs']} epochs")
        if which == "final":
            raise CliError(f"{self.path} has no final models (fitted with --final-seeds 0?)")
        ckpts = list(self.fold_checkpoints().values())
        why = "" if which == "folds" else " (the run has no final models)"
        return ckpts, f"models: fold ensemble, mean of the {len(ckpts)} fold models{why}"

    def folds(self) -> list[Fold]:
        """The run's splits (empty when it has no splits.json)."""
        path = self.path / "splits.json"
        return load_splits(path)[0] if path.is_file() else []

    def is_own_store(self, store: str | Path) -> bool:
        """Whether ``store`` is the store the run was trained on."""
        own = self.config.get("store")
        return bool(own) and Path(own).resolve() == Path(store).resolve()
