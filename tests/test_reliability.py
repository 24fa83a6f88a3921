"""ECE and Brier before/after temperature scaling, the reliability diagram, in both tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mil.stats import expected_calibration_error
from mil.train.calibration import fit_rule
from mil.train.panel_calibration import fit_temperature, logit, sigmoid
from mil.train.reliability import BINS, ece, multiclass_calibration, panel_calibration


def _overconfident(n: int = 600, c: int = 4, sharpen: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z); reported probabilities softmax(sharpen * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, (n, c))
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in true])
    shown = np.exp(sharpen * z) / np.exp(sharpen * z).sum(1, keepdims=True)
    return shown, y


def test_top_label_ece_is_the_stats_one() -> None:
    p, y = _overconfident()
    assert ece(p.max(1), p.argmax(1) == y) == pytest.approx(
        expected_calibration_error(p, y, bins=BINS))


def test_temperature_lowers_ece_of_overconfident_probabilities() -> None:
    p, y = _overconfident()
    rule = fit_rule(p, y, ["a", "b", "c", "d"])
    assert rule.temperature > 2.0
    cal = multiclass_calibration(p, rule.calibrate(p), rule.calibrate(p), y)
    assert cal["ece"]["after"] < 0.5 * cal["ece"]["before"]
    assert cal["brier"]["after"] < cal["brier"]["before"]


def test_per_target_temperature_recovers_the_sharpening() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 4000)
    y = (rng.uniform(size=z.size) < sigmoid(z)).astype(int)
    assert fit_temperature(sigmoid(3 * z), y) == pytest.approx(3.0, rel=0.1)
    assert np.allclose(sigmoid(logit(np.array([0.2, 0.7]))), [0.2, 0.7])


def test_panel_calibration_ignores_unknown_labels() -> None:
    p = np.array([[0.9], [0.1], [0.8], [0.3]])
    y = np.array([[1.0], [0.0], [np.nan], [0.0]])
    cal = panel_calibration(p, p, p, y, ["A"])
    assert cal["per_target"]["A"]["brier"]["before"] == pytest.approx((0.01 + 0.01 + 0.09) / 3, abs=1e-6)
    assert sum(cal["per_target"]["A"]["reliability"]["before"]["count"]) == 3


def test_fit_records_calibration_and_draws_the_diagram(fit_run) -> None:
    out = fit_run["out"]
    m = json.loads((out / "metrics.json").read_text())["calibration"]
    for key in ("ece", "brier"):
        assert set(m[key]) == {"before", "after", "after_cross_fitted"}
    assert m["bins"] == BINS and m["reliability"]["before"]["count"]
    with Image.open(out / "reliability.png") as im:
        assert im.format == "PNG" and im.width > 300
    sc = json.loads((out / "conformal.json").read_text())
    assert sc["task"] == "multiclass" and len(sc["scores"]) == 12
