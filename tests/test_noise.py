"""Confident learning (mil.blast noise) and fit --corrections."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mil.blast import cli as blast
from mil.blast.noise import (
    calibrated_joint,
    confident_joint,
    estimate,
    filter_error,
    find_issues,
    transition,
)
from tests.test_agreement import ANNA, BEN, write_folder
from tests.test_blast import FAST, planted_store, write_labels


def noisy(n: int, flip: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true (n,), given (n,) with exactly round(flip n) flipped, P(blast) of a good filter)."""
    rng = np.random.default_rng(seed)
    true = (rng.uniform(size=n) < 0.4).astype(int)
    flipped = rng.permutation(n)[: round(flip * n)]
    given = true.copy()
    given[flipped] = 1 - given[flipped]
    p = np.clip(np.where(true == 1, 0.85, 0.15) + rng.normal(0, 0.08, n), 0.01, 0.99)
    return true, given, p


def test_confident_joint_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])
    c, t = confident_joint(y, p)
    # t0 = (0.9 + 0.8 + 0.3) / 3 = 0.667, t1 = (0.8 + 0.6 + 0.4) / 3 = 0.6
    assert t == pytest.approx([2 / 3, 0.6])
    assert c.tolist() == [[2, 1], [0, 2]]  # cell 5 (labelled 1, p0 = 0.6 < t0) is not counted
    q = calibrated_joint(c, np.array([3, 3]))
    assert q == pytest.approx(np.array([[2, 1], [0, 3]]) / 6)
    assert transition(q) == pytest.approx(np.array([[1, 0], [0.25, 0.75]]))  # rows: true
    assert find_issues(y, p, q).tolist() == [False, False, True, False, False, False]


@pytest.mark.parametrize("flip", [0.0, 0.1, 0.2, 0.3])
def test_error_rate_tracks_the_flip_rate(flip: float) -> None:
    true, given, p = noisy(2000, flip)
    est = estimate(given, p)
    assert est["error_rate"] == pytest.approx(flip, abs=0.02)
    wrong = given != true
    if flip:
        assert (est["issues"] & wrong).sum() / wrong.sum() > 0.9  # recall of the flips
        assert (est["issues"] & ~wrong).sum() <= 0.02 * len(true)
    assert est["filter_error_rate"] == pytest.approx(np.mean((p >= 0.5) != true), abs=0.02)


def test_filter_error_inverts_the_noise_exactly() -> None:
    # truth: 50/50; filter error 10% symmetric; labels flipped 20% symmetric, independently
    t = np.array([[0.8, 0.2], [0.2, 0.8]])
    joint_true_call = np.array([[0.45, 0.05], [0.05, 0.45]])
    m = t.T @ joint_true_call  # P(given, call)
    labels = np.repeat([0, 0, 1, 1], (m.ravel() * 10000).round().astype(int))
    calls = np.repeat([0, 1, 0, 1], (m.ravel() * 10000).round().astype(int))
    assert filter_error(labels, calls, t) == pytest.approx(0.10, abs=1e-3)
    assert filter_error(labels, calls, np.full((2, 2), 0.5)) is None


@pytest.mark.slow
def test_noise_cli_writes_json_and_suspects(tmp_path: Path) -> None:
    truth = planted_store(tmp_path / "s.h5", slides=6, cells=40)
    keys = sorted(truth)
    flipped = set(np.random.default_rng(0).permutation(len(keys))[:48].tolist())  # 20%
    given = {k: 1 - y if i in flipped else y for i, (k, y) in enumerate(zip(keys, [truth[k] for k in keys], strict=True))}
    labels = write_labels(tmp_path / "labels.csv", given)
    out = tmp_path / "cl" / "noise_cl.json"
    assert blast.main(["noise", str(tmp_path / "s.h5"), "--labels", str(labels),
                       "--out", str(out), *FAST]) == 0
    res = json.loads(out.read_text())
    assert res["error_rate"] == pytest.approx(0.2, abs=0.06) and res["n_cells"] == 240
    assert np.array(res["transition"]).sum(axis=1) == pytest.approx([1, 1])
    rows = list(csv.DictReader((tmp_path / "cl" / "suspects.csv").open()))
    assert len(rows) == 240 and rows[0]["rank"] == "1"
    top = {(r["slide_id"], r["cell_id"]) for r in rows[:48]}
    assert len(top & {keys[i] for i in flipped}) >= 40  # the flips lead the list
    assert (tmp_path / "cl" / "noise_cl.config.yaml").is_file()


def test_fit_with_corrections(tmp_path: Path) -> None:
    truth = planted_store(tmp_path / "s.h5", slides=6, cells=20)
    given = {k: y for k, y in truth.items() if k[0] != "S"}  # no label yet on slide "S"
    labels = write_labels(tmp_path / "labels.csv", given)
    audit = write_folder(tmp_path / "audit", {"anna": ANNA, "ben": BEN})
    # the hand folder's cells live on slide "S", absent from the store: they are added
    # as labels, so fitting must name them as missing
    assert blast.main(["fit", str(tmp_path / "s.h5"), "--labels", str(labels), "--out",
                       str(tmp_path / "f.pt"), "--corrections", str(audit), *FAST]) == 2
    key = sorted(truth)[:10]  # now a folder on the store's own cells
    with (audit / "review.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "slide_id", "cell_id", "path", "expert"])
        w.writerows([[i, s, c, "", ""] for i, (s, c) in enumerate(key, 1)])
    with (audit / "key.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "slide_id", "cell_id", "predicted", "blast_prob"])
        w.writerows([[i, s, c, "blast", 0.9] for i, (s, c) in enumerate(key, 1)])
    for name in ("anna", "ben"):
        (audit / "raters" / f"{name}.csv").write_text(
            "slide_id,cell_id,label,answered_at\n" + "".join(
                f"{s},{c},{'x' if i == 0 else ('blast' if truth[(s, c)] else 'non-blast')},t\n"
                for i, (s, c) in enumerate(key)))
    flipped = {k: 1 - y for k, y in truth.items()}  # every label wrong
    labels = write_labels(tmp_path / "labels.csv", flipped)
    assert blast.main(["fit", str(tmp_path / "s.h5"), "--labels", str(labels), "--out",
                       str(tmp_path / "f.pt"), "--corrections", str(audit), *FAST]) == 0
    m = json.loads((tmp_path / "f.metrics.json").read_text())
    assert m["corrections"] == {"changed": 9, "confirmed": 0, "added": 0,
                                "dropped_unusable": 1, "kept": 0}
    assert m["n_cells"] == 119
