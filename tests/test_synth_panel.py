"""python -m mil.synth --task multilabel: prevalences, co-occurrence, cues, determinism."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from mil.synth.cli import main
from mil.synth.panel import PREVALENCE, TARGETS, panel_labels
from mil.train.panel_labels import read_panel


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "config.yaml":
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_prevalences_are_exact_and_flt3_travels_with_npm1() -> None:
    y = panel_labels(200, seed=4)
    assert y.sum(0).tolist() == [round(PREVALENCE[t] * 200) for t in TARGETS]
    npm1, flt3, cebpa = y.T
    assert flt3[npm1 == 1].mean() > 2 * flt3[npm1 == 0].mean()  # positively correlated
    assert not (cebpa & npm1).any()
    assert not np.array_equal(y, panel_labels(200, seed=5))


def test_cohort_is_deterministic_and_cues_follow_the_labels(tmp_path: Path) -> None:
    argv = ["--task", "multilabel", "--slides", "20", "--cells", "6", "--image-size", "32"]
    assert main([str(tmp_path / "a"), *argv]) == 0
    assert main([str(tmp_path / "b"), *argv, "--workers", "2"]) == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    table = read_panel(tmp_path / "a" / "slides.csv")
    assert table.targets == list(TARGETS) and not np.isnan(table.y).any()
    positives = {s: {t for t, v in zip(TARGETS, row, strict=True) if v == 1}
                 for s, row in zip(table.slide_ids, table.y, strict=True)}
    with (tmp_path / "a" / "cells.csv").open() as fh:
        cells = list(csv.DictReader(fh))
    shown: dict[str, set[str]] = {s: set() for s in positives}
    for c in cells:
        if c["cue"]:
            assert c["cell_type"] == "blast" and c["shows_cue"] == "1"
            shown[c["slide_id"]].add(c["cue"])
    assert all(shown[s] <= positives[s] for s in positives)  # only the slide's own targets
    assert any(shown[s] for s in positives) and all(not shown[s] for s in positives if not positives[s])
    assert (tmp_path / "a" / "cell_labels.csv").is_file()
