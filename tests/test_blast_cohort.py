"""The blast filter under shift: its standardisation choice and its calibration report on the
labelled cells of a new cohort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mil import stats
from mil.blast import cli as blast
from mil.blast.model import load_filter
from mil.store import BLAST_PROB, open_store
from tests.test_blast import FAST, planted_store, write_labels

SCALE = np.array([2.0, 0.5, 4.0, 2.0, 0.5, 2.0, 4.0, 0.5])
SHIFT = np.array([3.0, -1.0, 8.0, 0.5, 2.0, -2.0, 1.0, -3.0])


def _shifted(src: Path, dst: Path) -> None:
    """A copy with every feature d scaled and shifted (features rounded to 1/16 first: exact)."""
    with open_store(src, "a") as a, open_store(dst, "a") as b:
        b.init(dict(a.attrs))
        for sid in a.slides():
            x = np.round(a.features(sid).astype(np.float64) * 16) / 16
            ids, paths = a.strings(sid, "cell_ids"), a.strings(sid, "paths")
            a.write_slide(sid, x.astype(np.float16), ids, paths)
            b.write_slide(sid, (x * SCALE + SHIFT).astype(np.float16), ids, paths)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cohorts")
    truth = planted_store(d / "a.h5", slides=10, cells=20)  # >= MIN_COHORT_SLIDES
    _shifted(d / "a.h5", d / "b.h5")
    return {"a": d / "a.h5", "b": d / "b.h5", "labels": write_labels(d / "cells.csv", truth),
            "dir": d}


def _fit(c: dict[str, Path], mode: str) -> Path:
    """The filter fitted on cohort a with ``--standardise mode`` (fitted once per module)."""
    out = c["dir"] / f"{mode}.pt"
    if not out.is_file():
        assert blast.main(["fit", str(c["a"]), "--labels", str(c["labels"]), "--out", str(out),
                           "--standardise", mode, *FAST]) == 0
    return out


def _probs(store: Path) -> np.ndarray:
    with open_store(store) as st:
        return np.concatenate([st.annotation(s, BLAST_PROB) for s in st.slides()])


def test_standardise_choice_is_stored_and_applied(cohorts: dict[str, Path]) -> None:
    none, train = load_filter(_fit(cohorts, "none"))[0], load_filter(_fit(cohorts, "train"))[0]
    assert torch.equal(none.mean, torch.zeros(8)) and torch.equal(none.std, torch.ones(8))
    with open_store(cohorts["a"]) as st:
        x = np.concatenate([st.features(s) for s in st.slides()]).astype(np.float32)
    assert np.allclose(train.mean.numpy(), x.mean(0), atol=1e-4)


def test_cohort_standardisation_undoes_a_shift_of_the_whole_store(cohorts, tmp_path: Path):
    flt = _fit(cohorts, "cohort")
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    a.write_bytes(cohorts["a"].read_bytes())
    b.write_bytes(cohorts["b"].read_bytes())
    for store in (a, b):
        assert blast.main(["predict", str(store), "--filter", str(flt)]) == 0
    assert np.allclose(_probs(a), _probs(b), atol=1e-4)
    with open_store(b) as st:
        assert st.annotation_attrs("S00", BLAST_PROB)["standardise"] == "cohort"
    small = tmp_path / "small.h5"  # too few slides for a cohort: the training statistics
    planted_store(small, slides=3, cells=5)
    assert blast.main(["predict", str(small), "--filter", str(flt)]) == 0
    with open_store(small) as st:
        assert st.annotation_attrs("S00", BLAST_PROB)["standardise"] == "train"
    train = _fit(cohorts, "train")  # the control: training statistics are moved by the shift
    assert blast.main(["predict", str(b), "--filter", str(train), "--overwrite"]) == 0
    assert not np.allclose(_probs(a), _probs(b), atol=1e-2)


def test_predict_reports_calibration_on_labelled_cells(cohorts, tmp_path: Path, capsys) -> None:
    flt = _fit(cohorts, "train")
    store = tmp_path / "b.h5"
    store.write_bytes(cohorts["b"].read_bytes())
    capsys.readouterr()
    assert blast.main(["predict", str(store), "--filter", str(flt), "--labels",
                       str(cohorts["labels"]), "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    for key in ("accuracy", "balanced_accuracy", "auroc", "ece", "brier"):
        assert key in out
    r = json.loads((tmp_path / "r.json").read_text())
    truth = {}
    for line in cohorts["labels"].read_text().splitlines()[1:]:
        s, c, lab = line.split(",")
        truth[(s, c)] = int(lab == "Blast")
    with open_store(store) as st:
        cells = [(s, c) for s in sorted(st.slides()) for c in sorted(st.strings(s, "cell_ids"))]
        prob = {(s, c): p for s in st.slides()
                for c, p in zip(st.strings(s, "cell_ids"), st.annotation(s, BLAST_PROB),
                                strict=True)}
    y, p = np.array([truth[k] for k in cells]), np.array([prob[k] for k in cells], np.float64)
    assert r["n_cells"] == 200 and r["n_blast"] == int(y.sum())
    assert r["ece"]["value"] == pytest.approx(stats.expected_calibration_error(p, y))
    assert r["brier"]["value"] == pytest.approx(stats.brier_score(p, y))
    assert r["auroc"]["value"] == pytest.approx(stats.auroc(y, p))
    assert r["accuracy"]["value"] == pytest.approx(stats.accuracy(y, p >= 0.5))
    assert set(r["training_cv"]) >= {"accuracy", "ece", "brier"}
