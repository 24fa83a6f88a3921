"""Agreement statistics, scoring an audit folder with several raters, and its safeguards."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mil.blast import cli as blast
from mil.blast.agreement import TIE, agreement, cohen_kappa, consensus, fleiss_kappa
from mil.blast.folder import BLAST, NONBLAST, UNSURE, UNUSABLE, parse_answer
from mil.blast.score import apply_corrections, score_audit
from mil.errors import CliError
from tests.conftest import make_store

# Fleiss (1971) as worked in the literature: 10 items, 14 raters, 5 categories, kappa 0.210
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])


def test_cohen_kappa_by_hand_and_against_sklearn() -> None:
    # p_o = 3/4; p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2 -> kappa = 0.5
    assert cohen_kappa(["b", "b", "n", "n"], ["b", "n", "n", "n"]) == pytest.approx(0.5)
    assert np.isnan(cohen_kappa(["b", "b"], ["b", "b"]))  # chance agreement 1: undefined
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 4, 60)
        b = np.where(rng.uniform(size=60) < 0.6, a, rng.integers(0, 4, 60))
        assert cohen_kappa(a, b) == pytest.approx(sk.cohen_kappa_score(a, b), abs=1e-12)


def test_fleiss_kappa_published_value_and_statsmodels() -> None:
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.20993, abs=5e-5)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[1, 1], [2, 1]]))
    sm = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(1)
    for _ in range(10):
        table = np.stack([rng.multinomial(5, rng.dirichlet(np.ones(4))) for _ in range(30)])
        assert fleiss_kappa(table) == pytest.approx(sm.fleiss_kappa(table, method="fleiss"))


def test_agreement_uses_complete_cases_and_bootstraps() -> None:
    ratings = np.array([[0, 0], [1, 1], [0, 1], [1, 1], [2, 2], [0, -1], [1, 0], [0, 0]])
    res = agreement(ratings, 4, ["a", "b"], n_boot=200, seed=0)
    full = ratings[:5].tolist() + ratings[6:].tolist()
    assert res["n_cells"] == 7 and res["method"] == "cohen"
    assert res["kappa"] == pytest.approx(cohen_kappa(*np.array(full).T))
    lo, hi = res["ci95"]
    assert lo < res["kappa"] < hi and res["percent_agreement"] == pytest.approx(5 / 7)
    assert agreement(ratings[:, :1], 4, ["a"])["kappa"] is None


def test_consensus_majority_ties_and_unsure() -> None:
    assert consensus([BLAST, BLAST, UNSURE]) == BLAST
    assert consensus([BLAST, NONBLAST]) == TIE
    assert consensus([BLAST, UNSURE]) == TIE  # an unsure vote is a vote, not an abstention
    assert consensus([UNSURE, UNSURE, BLAST]) == UNSURE and consensus([]) is None
    assert parse_answer(" X ") == UNUSABLE and parse_answer("Non-Blast") == NONBLAST


def write_folder(d: Path, answers: dict[str, list[str]], share_blast: float = 0.2,
                 strategy: str = "stratified") -> Path:
    """A blinded audit folder by hand: cells b0..b4 called blast, n0..n4 called non-blast."""
    d.mkdir(parents=True, exist_ok=True)
    cells = [(f"b{i}", BLAST) for i in range(5)] + [(f"n{i}", NONBLAST) for i in range(5)]
    with (d / "review.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "slide_id", "cell_id", "path", "expert"])
        w.writerows([[i, "S", c, f"{c}.png", ""] for i, (c, _) in enumerate(cells, 1)])
    with (d / "key.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "slide_id", "cell_id", "predicted", "blast_prob"])
        w.writerows([[i, "S", c, p, 0.9 if p == BLAST else 0.1]
                     for i, (c, p) in enumerate(cells, 1)])
    (d / "review.json").write_text(json.dumps({"strategy": strategy, "predicted_share": {
        BLAST: share_blast, NONBLAST: 1 - share_blast}}))
    (d / "raters").mkdir(exist_ok=True)
    for name, labels in answers.items():
        with (d / "raters" / f"{name}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["slide_id", "cell_id", "label", "answered_at"])
            w.writerows([["S", c, lab, "t"] for (c, _), lab in zip(cells, labels, strict=True)
                         if lab])
    return d


B, N, U, X = BLAST, NONBLAST, UNSURE, UNUSABLE
ANNA = [B, B, B, N, X, N, N, N, B, U]
BEN = [B, B, N, N, X, N, N, N, B, ""]


def test_two_raters_scored_by_hand(tmp_path: Path) -> None:
    res = score_audit(write_folder(tmp_path / "a", {"anna": ANNA, "ben": BEN}), n_boot=100)
    # consensus: b0 b1 blast, b2 tie, b3 non-blast (filter wrong), b4 unusable;
    # n0-n2 non-blast, n3 blast (wrong), n4 unsure (only anna answered)
    assert res["consensus"] == {B: 3, N: 4, U: 1, X: 1, TIE: 1}
    assert res["excluded_tie"] == 1 and res["excluded_unsure"] == 1
    assert res["blast_error_rate"] == pytest.approx(1 / 3)  # b3 wrong of b0 b1 b3
    assert res["nonblast_error_rate"] == pytest.approx(1 / 4)  # n3 wrong of n0-n3
    assert res["error_rate"] == pytest.approx(0.2 / 3 + 0.8 / 4)  # re-weighted to the store
    assert res["n"] == 7 and res["unweighted_error_rate"] == pytest.approx(2 / 7)
    assert res["unusable"]["n_cells"] == 1 and res["unusable"]["of"] == 10
    assert res["unusable"]["share"] == pytest.approx(0.2 * 1 / 5 + 0.8 * 0 / 5)
    a = res["agreement"]
    assert a["method"] == "cohen" and a["raters"] == ["anna", "ben"] and a["n_cells"] == 9
    code = {B: 0, N: 1, U: 2, X: 3}
    assert a["kappa"] == pytest.approx(cohen_kappa([code[v] for v in ANNA[:9]],
                                                   [code[v] for v in BEN[:9]]))
    assert a["binary"]["n_cells"] == 8
    assert res["per_rater"]["anna"]["n_answered"] == 10 and res["per_rater"]["ben"]["counts"][X] == 1
    assert res["per_rater"]["anna"]["blast_error_rate"] == pytest.approx(1 / 4)  # b3 of b0-b3


def test_three_raters_use_fleiss_with_pairwise(tmp_path: Path) -> None:
    cleo = [B, N, B, N, X, N, B, N, B, U]
    res = score_audit(write_folder(tmp_path / "a", {"anna": ANNA, "ben": BEN, "cleo": cleo}),
                      n_boot=50)
    a = res["agreement"]
    assert a["method"] == "fleiss" and len(a["pairwise"]) == 3 and a["n_cells"] == 9
    code = {B: 0, N: 1, U: 2, X: 3}
    counts = np.zeros((9, 4), int)
    for r in (ANNA, BEN, cleo):
        for i, v in enumerate(r[:9]):
            counts[i, code[v]] += 1
    assert a["kappa"] == pytest.approx(fleiss_kappa(counts))
    assert res["consensus"][B] == 4  # b2 now 2 of 3 blast


def test_stray_cell_in_a_rater_file_is_an_error(tmp_path: Path) -> None:
    d = write_folder(tmp_path / "a", {"anna": ANNA})
    with (d / "raters" / "anna.csv").open("a") as fh:
        fh.write("S,zz,blast,t\n")
    with pytest.raises(CliError, match="anna.csv: cell 'zz'"):
        score_audit(d)


def test_score_cli_on_a_folder_writes_json_and_consensus(tmp_path: Path) -> None:
    d = write_folder(tmp_path / "a", {"anna": ANNA, "ben": BEN})
    assert blast.main(["audit", "--score", str(d), "--bootstrap", "50"]) == 0
    res = json.loads((d / "noise.json").read_text())
    assert {"error_rate", "ci", "agreement", "per_rater"} <= set(res)
    rows = list(csv.DictReader((d / "noise.consensus.csv").open()))
    assert rows[2]["consensus"] == TIE and rows[2]["anna"] == B and rows[2]["predicted"] == B


def test_other_strategies_give_no_store_error_rate(tmp_path: Path) -> None:
    res = score_audit(write_folder(tmp_path / "a", {"anna": ANNA}, strategy="uncertain"))
    assert "error_rate" not in res and res["sample_error_rate"] == pytest.approx(2 / 8)


def test_corrections_replace_add_and_drop(tmp_path: Path) -> None:
    d = write_folder(tmp_path / "a", {"anna": ANNA, "ben": BEN})
    given = {("S", "b0"): 0, ("S", "b1"): 1, ("S", "b2"): 1, ("S", "b4"): 1, ("T", "q"): 0}
    out, tally = apply_corrections(given, d)
    assert out[("S", "b0")] == 1 and out[("S", "b1")] == 1 and out[("S", "b2")] == 1
    assert ("S", "b4") not in out and out[("S", "n3")] == 1 and out[("T", "q")] == 0
    assert tally == {"changed": 1, "confirmed": 1, "added": 5, "dropped_unusable": 1, "kept": 2}


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert blast.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mil.blast: error:")
    return err[0]


def test_audit_never_overwrites_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.h5"
    make_store(store, slides=2, cells=8, blast_prob=True).close()
    out = tmp_path / "audit"
    argv = ["audit", str(store), "--n", "6", "--out", str(out), "--neighbours", "2"]
    assert blast.main(argv) == 0
    assert blast.main(argv) == 0  # no answers yet: a fresh draw is fine
    assert (out / "cells" / "00001_n2.png").is_file() and not (out / "cells" / "00001_n3.png").exists()
    (out / "raters").mkdir()
    (out / "raters" / "anna.csv").write_text("slide_id,cell_id,label,answered_at\n"
                                             "S00,c000,blast,t\nS00,c001,x,t\nS01,c002,u,t\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    err = one_line_error(capsys, argv)
    assert "anna.csv holds 3 expert answer(s)" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (out / "raters" / "anna.csv").unlink()
    with (out / "review.csv").open("a") as fh:
        fh.write("99,S00,c000,x.png,blast\n")
    assert "review.csv holds 1 expert answer(s)" in one_line_error(capsys, argv)


def test_uncertain_and_suspect_strategies(tmp_path: Path) -> None:
    from mil.blast.audit import neighbour_rows, uncertain_sample

    probs = [np.array([0.1, 0.49, 0.9, 0.55]), np.array([0.52, 0.0])]
    assert sorted(uncertain_sample(probs, 3, seed=0)) == [(0, 1), (0, 3), (1, 0)]
    assert neighbour_rows(5, 0, None, 3) == [1, 2, 3]
    assert neighbour_rows(5, 2, None, 3) == [1, 3, 0]
    xy = np.array([[0, 0], [5, 0], [1, 0], [2, 0], [9, 9]], np.float32)
    assert neighbour_rows(5, 0, xy, 2) == [2, 3]
    store = tmp_path / "s.h5"
    make_store(store, slides=2, cells=8, blast_prob=True).close()
    sus = tmp_path / "suspects.csv"
    sus.write_text("rank,slide_id,cell_id\n1,S01,c003\n2,GONE,c000\n3,S00,c005\n4,S00,c001\n")
    out = tmp_path / "audit"
    assert blast.main(["audit", str(store), "--n", "2", "--out", str(out), "--strategy",
                       "suspects", "--suspects", str(sus)]) == 0
    rows = list(csv.DictReader((out / "review.csv").open()))
    assert sorted((r["slide_id"], r["cell_id"]) for r in rows) == [("S00", "c005"), ("S01", "c003")]
    assert json.loads((out / "review.json").read_text())["strategy"] == "suspects"


def test_filled_blinded_sheet_joins_the_key(tmp_path: Path) -> None:
    """The demo's path: the expert column of a blinded review.csv, the calls from key.csv."""
    d = write_folder(tmp_path / "a", {})
    rows = list(csv.DictReader((d / "review.csv").open()))
    for r, answer in zip(rows, ANNA, strict=True):
        r["expert"] = answer
    with (d / "review.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = score_audit(d / "review.csv", n_boot=0)
    assert res["raters"] == ["review.csv"] and res["agreement"]["kappa"] is None
    assert res["blast_error_rate"] == pytest.approx(1 / 4) and res["n"] == 8
    (d / "key.csv").unlink()
    with pytest.raises(CliError, match="key.csv"):
        score_audit(d)


def test_latent_class_corrects_for_rater_mistakes() -> None:
    from mil.blast.latent import fit_latent, latent_error

    rng = np.random.default_rng(3)
    n = 3000
    strata = np.repeat([1, 0], n // 2)  # the filter's call
    truth = np.where(rng.uniform(size=n) < 0.02, 1 - strata, strata)  # 2% filter error
    wrong = rng.uniform(size=(n, 2)) < np.array([0.05, 0.10])  # raters 5% and 10% wrong
    answers = np.where(wrong, 1 - truth[:, None], truth[:, None])
    answers[::7, 1] = -1  # rater 2 skipped some cells
    fit = fit_latent(strata, answers)
    assert fit["se"] == pytest.approx([0.95, 0.90], abs=0.02)
    assert fit["sp"] == pytest.approx([0.95, 0.90], abs=0.02)
    res = latent_error(strata, answers, (0.3, 0.7), ["a", "b"], n_boot=30)
    true_err = 0.3 * np.mean(truth[strata == 1] == 0) + 0.7 * np.mean(truth[strata == 0] == 1)
    assert res["error_rate"] == pytest.approx(true_err, abs=0.01)
    lo, hi = res["ci"]
    assert lo <= true_err <= hi
    # the consensus of the same two raters (ties left out) sits well above the truth
    both = (answers >= 0).all(axis=1) & (answers[:, 0] == answers[:, 1])
    cons = 0.3 * np.mean(answers[both & (strata == 1), 0] == 0) + \
        0.7 * np.mean(answers[both & (strata == 0), 0] == 1)
    assert cons > true_err + 0.004
    assert latent_error(strata, answers[:, :1], None, ["a"])["error_rate"] is None


def test_noise_json_has_the_latent_estimate(tmp_path: Path) -> None:
    res = score_audit(write_folder(tmp_path / "a", {"anna": ANNA, "ben": BEN}), n_boot=20)
    lat = res["latent_class"]
    assert 0 <= lat["error_rate"] <= 1 and set(lat["raters"]) == {"anna", "ben"}
    assert lat["n_cells"] == 8  # cells with a blast/non-blast answer (not b4: x, x; n4: u)
