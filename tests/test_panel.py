"""mil.fit --task multilabel: labels, masked loss, iterative stratification, fit, predict,
heatmaps per target, the per-target baselines."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.errors import CliError
from mil.losses import LOSSES, MaskedBinaryLoss
from mil.train.panel_labels import read_panel
from mil.train.panel_metrics import average_precision, panel_metrics
from mil.train.panel_splits import iterative_stratify, make_panel_splits
from mil.train.splits import check_no_leak
from tests.conftest import error_line
from tests.panel_fixtures import TARGETS, make_panel_store, panel_rows


@pytest.fixture(scope="module")
def panel_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A tiny finished multi-label run: 15 slides, 3 folds, one unknown CEBPA label."""
    from mil.fit import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("panel_run")
    st, labels, y = make_panel_store(root / "s.h5", unknown=[(0, 2)])
    st.close()
    out = root / "run"
    argv = [str(root / "s.h5"), "--labels", str(labels), "--out", str(out), "--task",
            "multilabel", "--folds", "3", "--epochs", "3", "--batch-size", "4", "--hidden", "8",
            "--attn-hidden", "4", "--instance-weights", "prior", "--no-progress",
            "--final-seeds", "1"]
    assert main(argv) == 0
    torch.set_num_threads(threads)
    return {"root": root, "store": root / "s.h5", "labels": labels, "out": out, "y": y}


# -- labels -----------------------------------------------------------------------------------
def test_labels_read_targets_and_unknowns(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("slide_id,patient_id,A,B\ns1,p1,1,\ns2,p1,0,1\ns3,,,0\n")
    t = read_panel(p)
    assert t.targets == ["A", "B"] and t.patients == ["p1", "p1", "s3"]
    assert np.array_equal(t.y, np.array([[1, np.nan], [0, 1], [np.nan, 0]]), equal_nan=True)
    assert read_panel(p, ["B"]).targets == ["B"]


@pytest.mark.parametrize("text, needle", [
    ("slide_id,A\ns1,yes\n", "row 2: slide 's1', column 'A': 'yes' is not 1, 0 or empty"),
    ("slide_id,A\ns1,1\ns1,0\n", "listed twice: s1"),
    ("slide_id,patient_id\ns1,p\n", "no target columns"),
])
def test_bad_labels_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(CliError) as err:
        read_panel(p)
    assert needle in str(err.value) and str(p) in str(err.value) and "\n" not in str(err.value)


def test_fit_names_a_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mil.fit import main

    st, labels, _ = make_panel_store(tmp_path / "s.h5")
    st.close()
    labels.write_text(labels.read_text().replace("S03,P3,1", "S03,P3,2"))
    assert main([str(tmp_path / "s.h5"), "--labels", str(labels), "--out", str(tmp_path / "r"),
                 "--task", "multilabel"]) == 2
    assert "slide 'S03', column 'NPM1': '2' is not 1, 0 or empty" in error_line(capsys)
    assert main([str(tmp_path / "s.h5"), "--labels", str(labels), "--out", str(tmp_path / "r"),
                 "--task", "multilabel", "--targets", "NPM1,TP53"]) == 2
    assert "no column(s) TP53 for --targets" in error_line(capsys)


def test_targets_need_the_multilabel_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mil.fit import main

    assert main([str(tmp_path / "s.h5"), "--labels", str(tmp_path / "l.csv"), "--out",
                 str(tmp_path / "r"), "--targets", "A,B"]) == 2
    assert "--targets is for --task multilabel" in error_line(capsys)


# -- the masked loss ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(LOSSES))
def test_unknown_labels_carry_no_loss_and_no_gradient(kind: str) -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([[1, 0, np.nan], [0, 1, 1], [np.nan, np.nan, 0], [1, 1, 0]], dtype=torch.float32)
    loss = MaskedBinaryLoss(kind, pos_weight=torch.tensor([2.0, 1.0, 3.0]))
    value = loss(z, y)
    value.backward()
    unknown = torch.isnan(y)
    assert torch.isfinite(value) and torch.all(z.grad[unknown] == 0) and torch.all(z.grad[~unknown] != 0)
    y2 = torch.where(unknown, 1 - torch.nan_to_num(y), y)  # any value where unknown ...
    z2 = z.detach().clone()
    z2[unknown] += 5.0  # ... and any logit there: the loss does not move
    assert torch.isclose(loss(z2, torch.where(unknown, torch.nan, y2)), value.detach())


def test_bce_equals_torch_on_known_labels() -> None:
    z, y = torch.randn(5, 2), torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0.0]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    assert torch.isclose(MaskedBinaryLoss("ce")(z, y), want)


# -- stratification -------------------------------------------------------------------------
def test_every_fold_holds_every_targets_positives() -> None:
    n = 60
    y = panel_rows(n, seed=3)
    patients = [f"P{i // 2}" for i in range(n)]  # two slides per patient, same labels
    for i in range(1, n, 2):
        y[i] = y[i - 1]
    y[:, 2] = 0
    for p in np.random.default_rng(1).permutation(n // 2)[:5]:  # a rare target: 5 of 30 patients
        y[2 * p: 2 * p + 2, 2] = 1
    sids = [f"S{i:02d}" for i in range(n)]
    folds = make_panel_splits(sids, y, patients, k=5, seed=0)
    check_no_leak(folds, dict(zip(sids, patients, strict=True)))
    row = {s: i for i, s in enumerate(sids)}
    for f in folds:
        test = y[[row[s] for s in f.test]]
        train = y[[row[s] for s in f.train]]
        assert (test.sum(0) >= 1).all() and (train.sum(0) >= 1).all(), test.sum(0)
    assert sorted(s for f in folds for s in f.test) == sids
    assert folds == make_panel_splits(sids, y, patients, k=5, seed=0)  # deterministic
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 4


def test_iterative_stratification_spreads_positives_evenly() -> None:
    y = np.zeros((100, 2), bool)
    y[:20, 0] = True
    y[10:60, 1] = True
    part = iterative_stratify(y, [0.25] * 4, random.Random(0))
    for p in range(4):
        assert y[part == p, 0].sum() == 5 and abs(y[part == p, 1].sum() - 12.5) <= 1


def test_a_patient_with_two_label_rows_is_refused() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    with pytest.raises(CliError, match="patient 'P0' has slides with different target labels"):
        make_panel_splits(["a", "b", "c", "d"], y, ["P0", "P0", "P1", "P2"], k=2)


# -- metrics -------------------------------------------------------------------------------------
def test_average_precision_matches_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y, s = rng.integers(0, 2, 30), np.round(rng.uniform(size=30), 1)  # ties included
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_unknown_labels_are_left_out_of_the_metrics() -> None:
    y = np.array([[1.0], [0.0], [np.nan], [1.0], [0.0]])
    p = np.array([[0.9], [0.2], [0.0], [0.8], [0.1]])
    m = panel_metrics(y, p, ["A"], n_boot=50)["per_target"]["A"]
    assert m["n_known"] == 4 and m["auroc"] == 1.0  # the unknown slide's 0.0 would not be 1.0


# -- the run ----------------------------------------------------------------------------------
def test_fit_writes_per_target_outputs(panel_run) -> None:
    out = panel_run["out"]
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", *(f"truth_{t}" for t in TARGETS),
                             *(f"prob_{t}" for t in TARGETS), *(f"call_{t}" for t in TARGETS)]
    assert len(rows) == 15 and next(r for r in rows if r["slide_id"] == "S00")["truth_CEBPA"] == ""
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "multilabel" and m["targets"] == TARGETS
    for t in TARGETS:
        pt = m["pooled"]["per_target"][t]
        for k in ("auroc", "average_precision", "balanced_accuracy"):
            lo, hi = pt["ci95"][k]
            assert lo <= pt[k] <= hi, (t, k)
    assert m["pooled"]["per_target"]["CEBPA"]["n_known"] == 14
    assert set(m["pooled"]["macro"]) >= {"auroc", "average_precision", "balanced_accuracy", "ci95"}
    for name in ("lr_all", "lr_blast"):
        assert set(m["baselines"][name]["pooled"]["per_target"]) == set(TARGETS)
        assert (out / "baselines" / f"{name}.csv").is_file()
    rule = json.loads((out / "calibration.json").read_text())
    assert rule["task"] == "multilabel" and len(rule["temperatures"]) == 3
    folds = json.loads((out / "splits.json").read_text())["folds"]
    y = panel_run["y"]
    for f in folds:
        idx = [int(s[1:]) for s in f["test"]]
        assert (np.nansum(y[idx], axis=0) >= 1).all()


def test_multilabel_model_has_a_branch_per_target(panel_run) -> None:
    from mil.train.ensemble import load_system

    system = load_system(panel_run["out"] / "fold_0" / "best.ckpt")
    assert system.hparams["task"] == "multilabel" and system.model.pool.branches == 3
    assert system.hparams["pooling"] == "gated-multibranch"


def test_predict_writes_probability_and_call_per_target(panel_run, tmp_path: Path) -> None:
    from mil.predict import main

    out = tmp_path / "p.csv"
    assert main([str(panel_run["out"]), "--out", str(out)]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slide_id", *(f"prob_{t}" for t in TARGETS),
                             *(f"call_{t}" for t in TARGETS)]
    assert all(r[f"call_{t}"] in ("0", "1") for r in rows for t in TARGETS)
    assert all(0 <= float(r[f"prob_{t}"]) <= 1 for r in rows for t in TARGETS)


def test_heatmap_explains_each_targets_branch(panel_run, tmp_path: Path) -> None:
    from mil.explain.run import export_run
    from mil.train.predict import predict_cohort

    out = tmp_path / "report"
    rows = export_run(panel_run["out"], None, out)
    assert len(rows) == 15 * 3
    s00 = [r for r in rows if r.slide_id == "S00"]
    assert [r.prediction.removeprefix("not ") for r in s00] == TARGETS
    pred = next(p for p in predict_cohort(panel_run["out"], models="folds").slides
                if p.slide_id == "S00")
    seen = []
    for r in s00:
        with (out / r.folder / "attention.csv").open() as fh:
            a = np.array([float(x["attention"]) for x in csv.DictReader(fh)])
        assert (out / r.folder / "gallery.png").is_file()
        seen.append(a)
        assert a.sum() == pytest.approx(1.0, abs=1e-4)
    assert not np.allclose(seen[0], seen[1])  # each target's own branch
    assert pred.attention.shape[1] == 3


def test_multilabel_calibration_and_conformal_per_target(panel_run, tmp_path: Path) -> None:
    from mil.predict import main

    out = panel_run["out"]
    m = json.loads((out / "metrics.json").read_text())["calibration"]
    assert set(m["per_target"]) == set(TARGETS) and "before" in m["macro"]["ece"]
    assert (out / "reliability.png").is_file()
    path = tmp_path / "p.csv"
    assert main([str(out), "--out", str(path), "--conformal", "0.2"]) == 0
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        sets = [r[f"set_{t}"] for t in TARGETS]
        assert all(s in ("0", "1", "both") for s in sets)
        assert r["review"] == str(int("both" in sets))


def test_rerun_reuses_finished_folds(panel_run, tmp_path: Path) -> None:
    import shutil

    from mil.fit import main

    out = tmp_path / "run"
    shutil.copytree(panel_run["out"], out)
    stamps = {k: (out / f"fold_{k}" / "best.ckpt").stat().st_mtime_ns for k in range(3)}
    argv = [str(panel_run["store"]), "--labels", str(panel_run["labels"]), "--out", str(out),
            "--task", "multilabel", "--folds", "3", "--epochs", "3", "--batch-size", "4",
            "--hidden", "8", "--attn-hidden", "4", "--instance-weights", "prior",
            "--no-progress", "--final-seeds", "1"]
    assert main(argv) == 0
    assert {k: (out / f"fold_{k}" / "best.ckpt").stat().st_mtime_ns for k in range(3)} == stamps
    assert main([*argv[:-2], "--final-seeds", "1", "--loss", "gce"]) == 2  # other settings


def test_mean_pooling_multilabel_explains_the_shared_attention() -> None:
    from mil.explain.panel import target_view
    from mil.train.ensemble import SlidePrediction

    pred = SlidePrediction("s", np.array([0.8, 0.3]), np.full((4, 1), 0.25), list("abcd"),
                           list("abcd"), None, ["A", "B"], calls=np.array([1, 0]))
    sa = target_view(pred, 1, None, None)
    a, why = sa.explained()
    assert a.shape == (4,) and "shared by all 2 targets" in why and sa.classes == ["not B", "B"]


def test_predict_scores_labelled_slides_per_target(panel_run, tmp_path: Path, capsys) -> None:
    from mil.predict import main

    out = tmp_path / "p.csv"
    assert main([str(panel_run["out"]), "--out", str(out), "--test-labels",
                 str(panel_run["labels"])]) == 0
    printed = capsys.readouterr().out
    assert "15 labelled slides" in printed and "LR all cells" in printed
    m = json.loads(out.with_suffix(".metrics.json").read_text())
    assert m["mil"]["per_target"]["CEBPA"]["n_known"] == 14
    assert set(m["baselines"]["lr_all"]["per_target"]) == set(TARGETS)
