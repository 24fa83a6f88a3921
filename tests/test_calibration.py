"""The decision rule (temperature, threshold, BCTS) and EM prevalence adaptation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mil.predict import main as predict_main
from mil.stats import balanced_accuracy
from mil.train.calibration import (
    DecisionRule,
    best_threshold,
    cross_fitted,
    fit_rule,
    fit_scaling,
    nll,
    softmax,
)
from mil.train.prevalence import em_prevalence

pytestmark = pytest.mark.usefixtures("one_thread")
MU = 1.2  # class-conditional scores: N(-MU, 1) for class 0, N(+MU, 1) for class 1


def _cohort(n: int, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,), scores (n,)) with P(y = 1) = prevalence."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < prevalence).astype(np.int64)
    return y, rng.normal(np.where(y == 1, MU, -MU), 1.0)


def _posterior(x: np.ndarray, prior: float, scale: float = 1.0) -> np.ndarray:
    """(n, 2) P(y | x) under ``prior`` (log LR = 2 MU x); ``scale`` > 1 is overconfident."""
    logit = scale * (2 * MU * x + np.log(prior / (1 - prior)))
    return softmax(np.stack([np.zeros_like(logit), logit], axis=1))


def test_temperature_lowers_the_nll_of_miscalibrated_oof_predictions():
    y, x = _cohort(2000, 0.3, seed=0)
    over = _posterior(x, 0.3, scale=3.0)  # logits 3x too large
    t, _ = fit_scaling(over, y)
    assert t == pytest.approx(3.0, rel=0.15)
    y2, x2 = _cohort(2000, 0.3, seed=1)  # held out
    test = _posterior(x2, 0.3, scale=3.0)
    rule = fit_rule(over, y, ["A", "B"])
    assert nll(rule.calibrate(test), y2) < nll(test, y2) - 0.1
    assert np.array_equal(rule.calibrate(test).argmax(1), test.argmax(1))  # T keeps argmax


def test_threshold_maximises_oof_balanced_accuracy():
    y, x = _cohort(300, 0.25, seed=2)
    p = 1 / (1 + np.exp(-(x + 1.0)))  # shifted scores: 0.5 is not the best cut
    t = best_threshold(p, y)
    grid = np.linspace(0, 1, 2001)
    best = max(balanced_accuracy(y, (p >= g).astype(int)) for g in grid)
    assert balanced_accuracy(y, (p >= t).astype(int)) >= best - 1e-12
    assert balanced_accuracy(y, (p >= t).astype(int)) > balanced_accuracy(y, (p >= 0.5).astype(int))


def test_rule_without_calibration_or_threshold_is_todays_argmax(tmp_path: Path):
    y, x = _cohort(200, 0.3, seed=3)
    p = _posterior(x, 0.5)
    rule = fit_rule(p, y, ["A", "B"], calibration="none", threshold="argmax")
    assert rule.temperature == 1.0 and rule.threshold is None
    assert np.array_equal(rule.calibrate(p), p) and np.array_equal(rule.calls(p), p.argmax(1))
    rule.save(tmp_path)
    assert DecisionRule.load(tmp_path) == rule


def test_em_recovers_a_prior_shift_from_calibrated_probabilities():
    _, x = _cohort(4000, 0.5, seed=4)  # new cohort: 50% class 1
    fit = em_prevalence(_posterior(x, 0.25), [0.75, 0.25])  # calibrated for the 25% cohort
    assert fit.converged and fit.prior[1] == pytest.approx(0.5, abs=0.05)
    truth = _posterior(x, 0.5)  # the adjusted posteriors are the new cohort's
    assert np.abs(fit.probs - truth).max() < 0.1
    same = em_prevalence(_posterior(x, 0.5), [0.5, 0.5])
    assert same.prior[1] == pytest.approx(0.5, abs=0.05)


def test_adapted_calls_at_a_boundary_keep_the_ranking(tmp_path: Path):
    """A cohort that EM drives to one class keeps the order of its slides in the probabilities
    mil.predict reports (no float32 rounding of 1 - 1e-7 into ties)."""
    from mil.train.ensemble import SlidePrediction
    from mil.train.metrics import macro_auroc
    from mil.train.predict import decided
    from mil.train.rundir import RunDir

    y, x = _cohort(400, 0.25, seed=8)
    fit_rule(_posterior(x, 0.25), y, ["A", "B"]).save(tmp_path)
    (tmp_path / "config.yaml").write_text("store: none\n")
    y_new, x_new = _cohort(60, 0.5, seed=9)
    raw = _posterior(x_new - 4.0, 0.25).astype(np.float32)  # shifted: EM sees almost no B
    preds = [SlidePrediction(f"S{i}", p, np.zeros((1, 1)), [], [], None, ["A", "B"])
             for i, p in enumerate(raw)]
    decided(RunDir(tmp_path), preds, adapt=True)
    adapted = np.stack([p.probs for p in preds])
    assert adapted[:, 1].max() < 1e-3  # EM went to the boundary
    assert macro_auroc(y_new, adapted) == pytest.approx(macro_auroc(y_new, raw), abs=1e-9)


def test_em_with_bcts_on_balanced_training_outputs():
    """Outputs of a class-balanced model carry a 50% prior; BCTS on the 25% OOF cohort makes
    them posteriors for 25%, which EM needs to find the new cohort's 50%."""
    y, x = _cohort(3000, 0.25, seed=5)
    rule = fit_rule(_posterior(x, 0.5, scale=1.5), y, ["A", "B"])
    assert rule.train_prior[1] == pytest.approx(0.25, abs=0.02)
    y_new, x_new = _cohort(1000, 0.5, seed=6)
    raw = _posterior(x_new, 0.5, scale=1.5)
    fit = em_prevalence(rule.prior_calibrated(raw), rule.train_prior)
    assert fit.prior[1] == pytest.approx(0.5, abs=0.05)
    fixed = rule.calls(rule.calibrate(raw))
    assert balanced_accuracy(y_new, fit.probs.argmax(1)) >= balanced_accuracy(y_new, fixed) - 0.02


def test_cross_fitted_rule_never_sees_its_own_fold():
    y, x = _cohort(90, 0.3, seed=7)
    p = _posterior(x, 0.5)
    folds = np.arange(90) % 3
    probs, calls = cross_fitted(p, y, folds, ["A", "B"], "temperature", "balanced")
    keep = folds != 0
    rule = fit_rule(p[keep], y[keep], ["A", "B"])
    assert np.allclose(probs[~keep], rule.calibrate(p[~keep]))
    assert np.array_equal(calls[~keep], rule.calls(probs[~keep]))


def test_fit_saves_the_rule_and_predict_adapts_prevalence(fit_run, tmp_path: Path, capsys):
    rule = DecisionRule.load(fit_run["out"])
    assert rule is not None and rule.threshold is not None and rule.temperature > 0
    m = json.loads((fit_run["out"] / "metrics.json").read_text())
    assert m["decision"]["temperature"] == rule.temperature
    assert m["decision"]["cross_fitted"]["n_slides"] == 12
    capsys.readouterr()
    assert predict_main([str(fit_run["out"]), "--out", str(tmp_path / "p.csv"),
                         "--adapt-prevalence"]) == 0
    out = capsys.readouterr().out
    assert "prevalence of this cohort by EM over 12 slides: A " in out
    assert "calls per class, fixed rule -> adapted to that prevalence" in out


@pytest.mark.parametrize("content", ["{not json", '{"unknown_field": 1}', "\udcff"])
def test_damaged_run_records_are_one_line_errors_naming_the_file(tmp_path, content) -> None:
    from mil.errors import CliError
    from mil.train.calibration import DecisionRule
    from mil.train.conformal import FILE as CONFORMAL
    from mil.train.conformal import ConformalScores
    from mil.train.panel_calibration import load_panel_rule

    for name in ("calibration.json", CONFORMAL):
        (tmp_path / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    for load, what in ((DecisionRule.load, "not a calibration file"),
                       (ConformalScores.load, "not a conformal scores file"),
                       (load_panel_rule, "not a multi-label calibration file")):
        with pytest.raises(CliError, match=what) as err:
            load(tmp_path)
        assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
