"""What the store holds for one slide."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SlideId = str
CellId = str


@dataclass
class Bag:
    """All cells of one slide as stored in the bag store."""

    slide_id: SlideId
    features: np.ndarray  # (N, D) float16 or float32
    cell_ids: list[CellId]
    paths: list[str]
    coords: np.ndarray | None = None  # (N, 2) float32
    annotations: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,)

    def __len__(self) -> int:
        return int(self.features.shape[0])
