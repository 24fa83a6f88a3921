"""The run folder ``mil.fit`` writes and ``mil.predict`` / ``mil.heatmap`` read.

    RUN/config.yaml         the resolved FitConfig
    RUN/splits.json         patient-grouped folds
    RUN/fold_K/best.ckpt    fold K's model (+ metrics.json, predictions.csv, logs)
    RUN/predictions.csv     out-of-fold predictions; RUN/metrics.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mil.config import load_yaml
from mil.errors import CliError
from mil.train.splits import Fold, load_splits


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

    def folds(self) -> list[Fold]:
        """The run's splits (empty when it has no splits.json)."""
        path = self.path / "splits.json"
        return load_splits(path)[0] if path.is_file() else []

    def is_own_store(self, store: str | Path) -> bool:
        """Whether ``store`` is the store the run was trained on."""
        own = self.config.get("store")
        return bool(own) and Path(own).resolve() == Path(store).resolve()
