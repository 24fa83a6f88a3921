"""mil.synth's second-cohort shifts (mil.synth.shift): class balance, cells per slide, smudge
cells, cohort-wide stain change and a class-linked tint that a second cohort reverses."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil.errors import CliError
from mil.synth.cli import main
from mil.synth.cohort import make_cohort, slide_plan

TINY = dict(slides=8, cells=10, image_size=32, classes=2, paired=0.0)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def log_rgb_by_class(info) -> dict[str, np.ndarray]:
    """Mean log RGB (3,) of all crops of each class's slides."""
    label = {r["slide_id"]: r["label"] for r in rows(info.slides_csv)}
    acc: dict[str, list[np.ndarray]] = {}
    for r in rows(info.cells_csv):
        img = np.asarray(Image.open(info.images / r["path"]), np.float32) + 1.0
        acc.setdefault(label[r["slide_id"]], []).append(np.log(img).reshape(-1, 3).mean(0))
    return {k: np.mean(v, 0) for k, v in acc.items()}


def test_class_shares_set_the_balance() -> None:
    plan = slide_plan(40, 2, 0.2, seed=3, shares=[0.25, 0.75])
    counts = Counter(label for _, label, _ in plan)
    assert abs(counts["PML-RARA"] - 10) <= 2 and abs(counts["NPM1"] - 30) <= 2
    assert Counter(label for _, label, _ in slide_plan(40, 2, 0.2, seed=3))["NPM1"] in (19, 20, 21)


def test_cells_spread_and_artefacts(tmp_path: Path) -> None:
    info = make_cohort(tmp_path / "c", cells_spread=0.5, artefacts=0.2, seed=2, **TINY)
    cells = rows(info.cells_csv)
    per_slide = Counter(r["slide_id"] for r in cells)
    assert all(5 <= n <= 15 for n in per_slide.values()) and len(set(per_slide.values())) > 1
    for sid, n in per_slide.items():
        slide = [r for r in cells if r["slide_id"] == sid]
        smudge = [r for r in slide if r["cell_type"] == "smudge"]
        others = [r for r in slide if r["cell_type"] not in ("smudge", "blast")]
        assert len(smudge) == min(round(0.2 * n), len(smudge) + len(others))
        assert all(r["is_blast"] == "0" and r["shows_cue"] == "0" for r in smudge)
    truth = {r["cell_id"]: r["label"] for r in rows(info.cell_labels_truth_csv)}
    assert all(truth[r["cell_id"]] == "non-blast" for r in cells if r["cell_type"] == "smudge" and r["cell_id"] in truth)


def test_confounder_goes_with_the_label_and_reverses(tmp_path: Path) -> None:
    a = log_rgb_by_class(make_cohort(tmp_path / "a", confounder=0.4, seed=1, **TINY))
    b = log_rgb_by_class(make_cohort(tmp_path / "b", confounder=-0.4, seed=1, **TINY))
    plain = log_rgb_by_class(make_cohort(tmp_path / "p", seed=1, **TINY))
    # red minus blue log intensity: the tint's axis. Same slides and cells, only the tint differs.
    rb = lambda m, k: float(m[k][0] - m[k][2])  # noqa: E731
    gap_a, gap_b = rb(a, "PML-RARA") - rb(a, "NPM1"), rb(b, "PML-RARA") - rb(b, "NPM1")
    gap_plain = rb(plain, "PML-RARA") - rb(plain, "NPM1")
    assert gap_a - gap_plain < -0.05 and gap_b - gap_plain > 0.05  # opposite directions


def test_cohort_wide_stain_shift_is_seen_by_every_slide(tmp_path: Path) -> None:
    plain = make_cohort(tmp_path / "p", seed=4, **TINY)
    hue = make_cohort(tmp_path / "h", stain_hue=0.2, seed=4, **TINY)
    pale = make_cohort(tmp_path / "b", brightness=0.3, seed=4, **TINY)
    assert [r["cell_type"] for r in rows(hue.cells_csv)] == [r["cell_type"] for r in rows(plain.cells_csv)]
    p, h, b = (np.mean(list(log_rgb_by_class(i).values()), 0) for i in (plain, hue, pale))
    assert (h[2] - h[0]) - (p[2] - p[0]) > 0.03  # red absorbs more, blue less: bluer crops
    assert (b - p).min() > 0.0  # paler in every channel


@pytest.mark.parametrize("argv, message", [
    (["--class-shares", "0.5,0.3,0.2"], "--class-shares needs 2 positive values"),
    (["--class-shares", "1,0"], "--class-shares needs 2 positive values"),
    (["--artefacts", "1.2"], "--artefacts must be in [0, 1)"),
    (["--cells-spread", "-0.1"], "--cells-spread must be in [0, 1)"),
    (["--confounder", "3"], "--stain-hue, --brightness and --confounder must lie in [-1, 1]"),
])
def test_bad_shift_flags_are_one_line_errors(tmp_path: Path, capsys, argv, message) -> None:
    assert main([str(tmp_path / "x"), "--classes", "2", *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_shift_zero_is_the_plain_generator(tmp_path: Path) -> None:
    plain = make_cohort(tmp_path / "p", seed=5, **TINY)
    zero = make_cohort(tmp_path / "z", seed=5, stain_hue=0.0, confounder=0.0, artefacts=0.0, **TINY)
    assert plain.cells_csv.read_bytes() == zero.cells_csv.read_bytes()
    first = rows(plain.cells_csv)[0]["path"]
    assert (plain.images / first).read_bytes() == (zero.images / first).read_bytes()
    with pytest.raises(CliError):
        make_cohort(tmp_path / "e", class_shares=[1.0], **TINY)
