"""The built-in baselines: the MIL's folds, sklearn-equal probabilities, the blast fallback, and
their place in metrics.json, the printed table and mil.predict --test-labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mil.predict import main as predict_main
from mil.store import open_store
from mil.train.baselines import LinearBaseline, slide_means
from mil.train.splits import load_splits
from tests.conftest import make_store, write_labels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_baseline_equals_sklearn(n_classes: int):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)) * [1, 2, 3, 4, 5, 6], np.arange(40) % n_classes
    ref = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced",
                                                             max_iter=5000)).fit(x, y)
    got = LinearBaseline.fit(x, y)
    assert np.allclose(got.probs(x), ref.predict_proba(x), atol=1e-6)
    # cohort mode: an affine copy of the cohort gets the same probabilities
    assert np.allclose(got.probs(3 * x + 5, cohort=True), got.probs(x, cohort=True), atol=1e-9)


def test_baselines_use_exactly_the_mils_folds(fit_run):
    out = fit_run["out"]
    folds, _ = load_splits(out / "splits.json")
    with fit_run["labels"].open() as fh:
        label = {r["slide_id"]: "AB".index(r["label"]) for r in csv.DictReader(fh)}
    means = slide_means(open_store(fit_run["store"]), sorted(label))
    row = {s: i for i, s in enumerate(means.slide_ids)}
    for name, x in (("lr_all", means.all), ("lr_blast", means.blast)):
        rows = list(csv.DictReader((out / "baselines" / f"{name}.csv").open()))
        for k, fold in enumerate(folds):
            mine = [r for r in rows if r["fold"] == str(k)]
            assert sorted(r["slide_id"] for r in mine) == fold.test
            fit_ids = fold.train + fold.val  # the MIL's non-test slides, nothing else
            oracle = make_pipeline(StandardScaler(), LogisticRegression(
                class_weight="balanced", max_iter=5000)).fit(
                    x[[row[s] for s in fit_ids]], [label[s] for s in fit_ids])
            p = oracle.predict_proba(x[[row[r["slide_id"]] for r in mine]])
            assert np.allclose([[float(r["prob_A"]), float(r["prob_B"])] for r in mine], p,
                               atol=1e-5)
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["baselines"]["lr_all"]["folds"]) == 3
    assert m["baselines"]["lr_blast"]["pooled"]["n_slides"] == 12


def test_blast_baseline_falls_back_to_all_cells_and_counts_it(tmp_path: Path):
    st = make_store(tmp_path / "s.h5", slides=3, cells=5, blast_prob=True)
    st.close()
    with open_store(tmp_path / "s.h5", "a") as st:
        st.write_annotation("S01", "blast_prob", np.full(5, 0.2, np.float32))
        st.write_annotation("S02", "blast_prob", np.array([0.9, 0.1, 0.6, 0.0, 0.3], np.float32))
        m = slide_means(st, st.slides())
        x = st.features("S02").astype(np.float64)
    assert "S01" in m.fallback and "S02" not in m.fallback
    assert np.allclose(m.blast[1], m.all[1])
    assert np.allclose(m.blast[2], x[[0, 2]].mean(0))
    make_store(tmp_path / "none.h5", slides=2).close()
    assert slide_means(open_store(tmp_path / "none.h5"), ["S00", "S01"]).blast is None


def test_baselines_in_the_printed_tables(fit_run, tmp_path: Path, capsys):
    labels = write_labels(tmp_path / "b.csv", ["S01", "S04", "S07", "S02"], classes="BABA")
    capsys.readouterr()
    assert predict_main([str(fit_run["out"]), "--out", str(tmp_path / "p.csv"),
                         "--test-labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "4 labelled slides" in out and "LR all cells" in out and "LR blasts" in out
    m = json.loads((tmp_path / "p.metrics.json").read_text())
    assert m["mil"]["n_slides"] == 4 and m["baselines"]["lr_all"]["n_slides"] == 4
    assert m["notes"][0].startswith("models: final ensemble")
    from mil.train.crossval import report

    table = report(json.loads((fit_run["out"] / "metrics.json").read_text()))
    assert "LR all cells pooled" in table and "LR blasts mean+-sd" in table
