"""Split-conformal sets: coverage over random calibration/test splits, mil.predict --conformal."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from mil.train.conformal import (
    ConformalScores,
    class_sets,
    quantile,
    split_coverage,
    target_calls,
)


def _scores(n: int = 400, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic score set: probabilities softmax(z), labels drawn from softmax(0.6 z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, c))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    q = np.exp(0.6 * z) / np.exp(0.6 * z).sum(1, keepdims=True)
    return p, np.array([rng.choice(c, p=row) for row in q])


def test_coverage_over_20_random_splits_is_near_one_minus_alpha(capsys) -> None:
    p, y = _scores()
    sc = ConformalScores.build("multiclass", list("ABCD"), p, y)
    res = split_coverage(sc, alpha=0.1, splits=20, seed=0)
    assert 0.85 <= res["coverage_mean"] <= 0.95, res
    assert 1.0 < res["set_size_mean"] < 4.0
    low = split_coverage(sc, alpha=0.3, splits=20, seed=0)  # the sets follow ALPHA
    assert low["coverage_mean"] < res["coverage_mean"] and low["set_size_mean"] < res["set_size_mean"]
    plain = split_coverage(sc, alpha=0.1, splits=20, seed=0, nonempty=False)
    assert 0.85 <= plain["coverage_mean"] <= 0.95 and plain["coverage_mean"] <= res["coverage_mean"]
    with capsys.disabled():
        print(f"\nconformal, 400 synthetic slides, ALPHA 0.1, 20 splits: coverage "
              f"{res['coverage_mean']:.3f}, mean set size {res['set_size_mean']:.2f}")


def test_multilabel_coverage_per_target() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2.0, (400, 3))
    p = 1 / (1 + np.exp(-z))
    y = (rng.uniform(size=z.shape) < 1 / (1 + np.exp(-0.5 * z))).astype(float)
    y[:40, 2] = np.nan  # unknown labels are not scored
    sc = ConformalScores.build("multilabel", ["a", "b", "c"], p, y)
    assert len(sc.scores[2]) == 360
    res = split_coverage(sc, alpha=0.1, splits=20, seed=0)
    for t in "abc":
        assert 0.85 <= res["per_target"][t]["coverage_mean"] <= 0.95, res


def test_quantile_and_sets() -> None:
    s = np.arange(1, 10) / 10  # 0.1 .. 0.9, n = 9
    assert quantile(s, 0.1) == 0.9  # ceil(10 * 0.9) = 9th smallest
    assert math.isinf(quantile(s, 0.05))  # ceil(10 * 0.95) = 10 > n: every answer
    member = class_sets(np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]), 0.66)
    assert member.tolist() == [[True, False, False], [True, True, False]]
    assert class_sets(np.array([[0.5, 0.5]]), 0.0).sum() >= 1  # never empty
    assert target_calls(np.array([[0.95, 0.5, 0.05]]), [0.3, 0.6, 0.3]) == [["1", "both", "0"]]


def test_predict_writes_sets_and_review_flags(fit_run, tmp_path: Path, capsys) -> None:
    from mil.predict import main

    out = tmp_path / "p.csv"
    assert main([str(fit_run["out"]), "--out", str(out), "--conformal", "0.2"]) == 0
    assert "conformal sets at ALPHA = 0.2" in capsys.readouterr().out
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        members = r["prediction_set"].split("|")
        assert r["prediction"] in members and set(members) <= {"A", "B"}
        assert r["review"] == str(int(len(members) > 1))
    assert main([str(fit_run["out"]), "--out", str(out), "--conformal", "0.01"]) == 0
    with out.open() as fh:  # 12 calibration slides cannot give 99%: every set is full
        assert all(r["prediction_set"].count("|") == 1 for r in csv.DictReader(fh))


def test_predict_conformal_needs_the_scores(fit_run, tmp_path: Path, capsys) -> None:
    import shutil

    from mil.predict import main
    from tests.conftest import error_line

    run = tmp_path / "run"
    shutil.copytree(fit_run["out"], run)
    (run / "conformal.json").unlink()
    assert main([str(run), "--out", str(tmp_path / "p.csv"), "--conformal", "0.1"]) == 2
    assert "no conformal.json" in error_line(capsys)
    assert main([str(fit_run["out"]), "--out", str(tmp_path / "p.csv"), "--conformal", "2"]) == 2
    assert "--conformal ALPHA must be in (0, 1)" in error_line(capsys)
