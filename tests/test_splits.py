"""Tests for mil.train.splits: partition, grouping, stratification, determinism, persistence."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mil.errors import CliError
from mil.train.splits import Fold, check_no_leak, load_splits, make_splits, save_splits


def make_cohort(*, n_patients: int = 30, classes: str = "ABC", max_slides: int = 3, seed: int = 0):
    """(slide_ids, labels, patient_ids): patient i has label classes[i % len] and 1..max slides."""
    import random

    rng = random.Random(seed)
    slides, labels, patients = [], [], []
    for i in range(n_patients):
        for j in range(rng.randint(1, max_slides)):
            slides.append(f"s{i}_{j}")
            labels.append(classes[i % len(classes)])
            patients.append(f"p{i}")
    return slides, labels, patients


def check_partition(folds: list[Fold], slides: list[str]) -> None:
    tests = [s for f in folds for s in f.test]
    assert sorted(tests) == sorted(slides)  # test parts partition all slides
    for f in folds:
        assert sorted(f.train + f.val + f.test) == sorted(slides)


def test_partition_and_no_leak():
    slides, labels, patients = make_cohort()
    folds = make_splits(slides, labels, patients, k=5, seed=1)
    assert len(folds) == 5
    check_partition(folds, slides)
    check_no_leak(folds, dict(zip(slides, patients, strict=True)))


@settings(max_examples=40, deadline=None)
@given(
    n_classes=st.integers(1, 3),
    per_class=st.integers(3, 8),
    k=st.integers(2, 3),
    seed=st.integers(0, 10_000),
    val_fraction=st.sampled_from([0.0, 0.2, 0.5]),
    slide_counts=st.lists(st.integers(1, 3), min_size=24, max_size=24),
)
def test_property_random_cohorts(n_classes, per_class, k, seed, val_fraction, slide_counts):
    slides, labels, patients = [], [], []
    for i in range(n_classes * per_class):
        for j in range(slide_counts[i]):
            slides.append(f"p{i}/s{j}")
            labels.append(i % n_classes)
            patients.append(f"p{i}")
    folds = make_splits(slides, labels, patients, k=k, seed=seed, val_fraction=val_fraction)
    check_partition(folds, slides)
    check_no_leak(folds, dict(zip(slides, patients, strict=True)))
    label_of = dict(zip(slides, labels, strict=True))
    patient_of = dict(zip(slides, patients, strict=True))
    for f in folds:
        assert {label_of[s] for s in f.train} == set(range(n_classes))  # every class trains
        rest = Counter(label_of[s] for s in {patient_of[s]: s for s in f.train + f.val}.values())
        can_val = val_fraction > 0 and max(rest.values()) > 1  # some class has >= 2 non-test
        assert (len(f.val) > 0) == can_val


def test_stratification_balanced():
    slides, labels, patients = make_cohort(n_patients=60, max_slides=1)
    folds = make_splits(slides, labels, patients, k=5, seed=3, val_fraction=0.25)
    for f in folds:
        test_counts = Counter(labels[slides.index(s)] for s in f.test)
        assert test_counts == {"A": 4, "B": 4, "C": 4}
        val_counts = Counter(labels[slides.index(s)] for s in f.val)
        assert val_counts == {"A": 4, "B": 4, "C": 4}  # round(0.25 * 16) per class


def test_deterministic_and_seed_dependent():
    slides, labels, patients = make_cohort()
    a = make_splits(slides, labels, patients, seed=7)
    assert a == make_splits(slides, labels, patients, seed=7)
    order = list(reversed(range(len(slides))))
    rev = make_splits(*([x[i] for i in order] for x in (slides, labels, patients)), seed=7)
    assert rev == a  # independent of input order
    assert make_splits(slides, labels, patients, seed=8) != a


def test_no_patient_ids_means_slide_level():
    folds = make_splits([f"s{i}" for i in range(10)], [i % 2 for i in range(10)], k=5)
    assert [len(f.test) for f in folds] == [2] * 5


def test_errors_are_one_line_cli_errors():
    slides, labels, patients = make_cohort(n_patients=30)
    labels = [("Z" if p == patients[-1] else lab) for lab, p in zip(labels, patients, strict=True)]
    with pytest.raises(CliError, match=r"class 'Z' has 1 patient\(s\), fewer than k=5"):
        make_splits(slides, labels, patients, k=5)
    with pytest.raises(CliError, match="k must be at least 2"):
        make_splits(slides, labels, patients, k=1)
    with pytest.raises(CliError, match="patient 'p0' has slides with different labels"):
        make_splits(["a", "b"], ["X", "Y"], ["p0", "p0"], k=2)
    with pytest.raises(CliError, match="slide 'a' is listed twice"):
        make_splits(["a", "a"], ["X", "X"], ["p0", "p1"], k=2)
    with pytest.raises(CliError, match="lengths must match"):
        make_splits(["a"], ["X", "Y"], ["p0"], k=2)
    with pytest.raises(CliError, match="val_fraction"):
        make_splits(slides, labels, patients, k=2, val_fraction=1.0)


def test_leak_detection_catches_planted_leak():
    slides, labels, patients = make_cohort()
    patient_of = dict(zip(slides, patients, strict=True))
    folds = make_splits(slides, labels, patients, k=3, seed=0)
    victim = folds[2].test[0]  # a test slide also put into train
    leaky = Fold(train=folds[2].train + [victim], val=folds[2].val, test=folds[2].test)
    with pytest.raises(CliError, match=rf"patient '{patient_of[victim]}' leaks in fold 2"):
        check_no_leak([folds[0], folds[1], leaky], patient_of)
    with pytest.raises(CliError, match="has no patient id"):
        check_no_leak(folds, {})


def test_json_round_trip(tmp_path):
    slides, labels, patients = make_cohort()
    folds = make_splits(slides, labels, patients, k=4, seed=5)
    path = tmp_path / "splits.json"
    save_splits(folds, path, {"seed": 5, "val_fraction": 0.2})
    loaded, meta = load_splits(path)
    assert loaded == folds
    assert meta["seed"] == 5 and meta["k"] == 4 and meta["schema"] == "cellmil.splits/1"
    assert json.loads(path.read_text())["folds"][0]["test"] == folds[0].test


def test_load_errors(tmp_path):
    with pytest.raises(CliError, match="does not exist"):
        load_splits(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CliError, match="not valid JSON"):
        load_splits(bad)
    bad.write_text('{"schema": "other"}')
    with pytest.raises(CliError, match="not a cellmil.splits/1 file"):
        load_splits(bad)


def test_small_class_val_keeps_a_training_patient():
    folds = make_splits([f"s{i}" for i in range(3)], ["A"] * 3, k=2, val_fraction=0.5)
    assert [(len(f.train), len(f.val), len(f.test)) for f in folds] == [(1, 0, 2), (1, 1, 1)]
