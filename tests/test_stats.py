import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mil.stats import (
    accuracy,
    auroc,
    balanced_accuracy,
    bootstrap_ci,
    expected_calibration_error,
    stratified_proportion,
    wilson_interval,
)


def test_wilson_hand_computed() -> None:
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # 0.1611
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_accuracy_and_balanced() -> None:
    y = np.array([1, 1, 1, 0])
    p = np.array([1, 1, 0, 1])
    assert accuracy(y, p) == 0.5
    assert balanced_accuracy(y, p) == pytest.approx((2 / 3 + 0) / 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=25))
def test_auroc_matches_pair_counting(rows: list[tuple[bool, int]]) -> None:
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] for r in rows], dtype=float)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        assert math.isnan(auroc(y, s))
        return
    ref = np.mean([1.0 if a > b else 0.5 if a == b else 0.0
                   for a, b in itertools.product(pos, neg)])
    assert auroc(y, s) == pytest.approx(ref)


def test_ece_hand_computed() -> None:
    # two bins used: conf 0.9 (2 cells, 1 right) and conf 0.6 (2 cells, 2 right)
    probs = np.array([0.9, 0.1, 0.6, 0.4])
    labels = np.array([1, 1, 1, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(expected)
    two_col = np.stack([1 - probs, probs], axis=1)
    assert expected_calibration_error(two_col, labels, bins=10) == pytest.approx(expected)


def test_bootstrap_reproducible_and_grouped() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.uniform(size=200) < 0.8, y, 1 - y)
    a = bootstrap_ci(accuracy, y, p, n=200, seed=3)
    assert a == bootstrap_ci(accuracy, y, p, n=200, seed=3)
    assert a[0] < accuracy(y, p) < a[1]
    groups = np.repeat(np.arange(10), 20)
    g = bootstrap_ci(accuracy, y, p, n=200, seed=3, groups=groups)
    assert g[0] < accuracy(y, p) < g[1]
    const = bootstrap_ci(accuracy, y, y, n=50)
    assert const == (1.0, 1.0)


def test_bootstrap_skips_nan_replicates() -> None:
    y = np.array([0, 0, 0, 1])
    lo, hi = bootstrap_ci(auroc, y, np.array([0.1, 0.2, 0.3, 0.9]), n=100)
    assert lo == hi == 1.0  # replicates without a positive are dropped


def test_stratified_proportion_hand_case() -> None:
    est, (lo, hi), n_eff = stratified_proportion([0.2, 0.1], [10, 10], [0.2, 0.8])
    assert est == pytest.approx(0.2 * 0.2 + 0.8 * 0.1)  # 0.12
    var = 0.04 * 0.2 * 0.8 / 10 + 0.64 * 0.1 * 0.9 / 10
    assert n_eff == pytest.approx(0.12 * 0.88 / var)
    assert (lo, hi) == pytest.approx(wilson_interval(0.12 * n_eff, n_eff))
    est, ci, n_eff = stratified_proportion([0.0, 0.0], [5, 5], [1, 1])
    assert est == 0.0 and n_eff == 10 and ci == wilson_interval(0, 10)
