"""Tests of the synthetic cohort generator (mil.synth): tiny cohorts, < 20 s."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mil.errors import CliError
from mil.synth.cells import CELL_TYPES, NON_BLAST_TYPES, render_cell
from mil.synth.cli import main
from mil.synth.cohort import make_cohort, png_bytes, slide_plan
from mil.synth.config import CLASS_NAMES, SynthConfig
from mil.synth.montage import write_montage

TINY = dict(slides=4, cells=8, image_size=64, noise=0.25, labelled=0.5)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (config.yaml excluded: it is the same by construction) -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), seed=1, **TINY)


def test_same_seed_same_bytes_other_seed_differs(cohort, tmp_path: Path) -> None:
    again = make_cohort(tmp_path / "again", seed=1, **TINY)
    assert tree_bytes(again.root) == tree_bytes(cohort.root)
    other = make_cohort(tmp_path / "other", seed=2, **TINY)
    a, b = tree_bytes(cohort.root), tree_bytes(other.root)
    assert a["cells.csv"] != b["cells.csv"]
    assert a["images/S000/S000_c0000.png"] != b["images/S000/S000_c0000.png"]


def test_workers_do_not_change_the_bytes(tmp_path: Path) -> None:
    opts = dict(slides=3, cells=3, image_size=32, seed=5)
    one = make_cohort(tmp_path / "one", workers=1, **opts)
    two = make_cohort(tmp_path / "two", workers=2, **opts)
    strip = lambda d: {k: v for k, v in d.items() if k != "config.yaml"}  # noqa: E731
    assert strip(tree_bytes(one.root)) == strip(tree_bytes(two.root))


def test_csv_bookkeeping(cohort) -> None:
    cells = read_csv(cohort.cells_csv)
    assert len(cells) == cohort.n_cells == TINY["slides"] * TINY["cells"]
    assert list(cells[0]) == ["slide_id", "cell_id", "path", "cell_type", "is_blast", "shows_cue"]
    for row in cells:
        img = Image.open(cohort.images / row["path"])
        assert img.size == (64, 64) and img.mode == "RGB"
        assert row["path"] == f"{row['slide_id']}/{row['cell_id']}.png"
        assert row["cell_type"] in CELL_TYPES
        assert row["is_blast"] == str(int(row["cell_type"] == "blast"))
        assert row["shows_cue"] == "0" or row["is_blast"] == "1"
    assert len({r["cell_id"] for r in cells}) == len(cells)
    on_disk = {p.relative_to(cohort.images).as_posix() for p in cohort.images.rglob("*.png")}
    assert on_disk == {r["path"] for r in cells}

    noisy, truth = read_csv(cohort.cell_labels_csv), read_csv(cohort.cell_labels_truth_csv)
    n_lab = round(TINY["labelled"] * len(cells))
    assert list(noisy[0]) == ["slide_id", "cell_id", "label"]
    assert len(noisy) == len(truth) == n_lab == cohort.n_labelled
    assert [(r["slide_id"], r["cell_id"]) for r in noisy] == [(r["slide_id"], r["cell_id"]) for r in truth]
    flips = sum(a["label"] != b["label"] for a, b in zip(noisy, truth, strict=True))
    assert flips == round(TINY["noise"] * n_lab) == cohort.n_flipped
    blast = {r["cell_id"]: r["is_blast"] == "1" for r in cells}
    assert all((r["label"] == "blast") == blast[r["cell_id"]] for r in truth)
    assert {r["label"] for r in noisy} <= {"blast", "non-blast"}


def test_slides_csv_and_patients() -> None:
    plan = slide_plan(40, 4, 0.2, seed=0)
    assert len(plan) == 40 and len({s for s, _, _ in plan}) == 40
    by_patient: dict[str, set[str]] = {}
    for _, label, patient in plan:
        by_patient.setdefault(patient, set()).add(label)
    assert all(len(labels) == 1 for labels in by_patient.values())  # a patient has one label
    sizes = [sum(p == q for *_, p in plan) for q in by_patient]
    assert 4 <= sizes.count(2) <= 10 and max(sizes) == 2  # ~20% of patients have two slides
    counts = [sum(label == name for _, label, _ in plan) for name in CLASS_NAMES[:4]]
    assert max(counts) - min(counts) <= 2


def test_blast_and_cue_shares_in_range(tmp_path: Path) -> None:
    info = make_cohort(tmp_path / "c", slides=6, cells=20, image_size=32, seed=3, blast_min=0.2,
                       blast_max=0.6, cue_min=0.5, cue_max=0.7)
    cells = read_csv(info.cells_csv)
    for sid in info.slide_ids:
        rows = [r for r in cells if r["slide_id"] == sid]
        n_blast = sum(r["is_blast"] == "1" for r in rows)
        n_cue = sum(r["shows_cue"] == "1" for r in rows)
        assert 0.2 * 20 - 0.5 <= n_blast <= 0.6 * 20 + 0.5
        assert 0.5 * n_blast - 0.5 <= n_cue <= 0.7 * n_blast + 0.5


@pytest.mark.parametrize("cell_type", NON_BLAST_TYPES)
def test_non_blasts_carry_no_class_signal(cell_type: str) -> None:
    images = [render_cell(np.random.default_rng(7), cell_type, class_name=name, shows_cue=True, size=48)
              for name in CLASS_NAMES]
    assert all(np.array_equal(images[0], im) for im in images[1:])


def test_blast_cue_only_when_shown_and_distinct_per_class() -> None:
    plain = [render_cell(np.random.default_rng(11), "blast", class_name=n, size=64) for n in CLASS_NAMES]
    assert all(np.array_equal(plain[0], im) for im in plain[1:])
    cued = [render_cell(np.random.default_rng(11), "blast", class_name=n, shows_cue=True, size=64)
            for n in CLASS_NAMES]
    for im in cued:  # the cue is visible: a real change, not a pixel or two
        diff = np.abs(im.astype(int) - plain[0].astype(int)).max(axis=2)
        assert (diff > 30).sum() >= 15
    for i in range(len(cued)):
        for j in range(i):
            assert not np.array_equal(cued[i], cued[j])


def test_render_cell_rejects_unknown_names() -> None:
    with pytest.raises(ValueError):
        render_cell(np.random.default_rng(0), "platelet")
    with pytest.raises(ValueError):
        render_cell(np.random.default_rng(0), "blast", class_name="BCR-ABL", shows_cue=True)


def test_png_bytes_round_trip() -> None:
    img = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(png_bytes(img))).convert("RGB"))
    assert np.array_equal(back, img)


def test_make_cohort_defaults_match_config() -> None:
    params = inspect.signature(make_cohort).parameters
    for f in dataclasses.fields(SynthConfig):
        assert params[f.name].default == f.default, f.name


def test_existing_output_needs_overwrite(cohort) -> None:
    with pytest.raises(CliError, match="overwrite"):
        make_cohort(cohort.root, seed=1, **TINY)


@pytest.mark.parametrize(
    "flags", [["--slides", "0"], ["--noise", "1.5"], ["--classes", "1"], ["--classes", "7"],
              ["--labelled", "-0.1"], ["--cells", "0"]]
)
def test_cli_errors_are_one_line(flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mil.synth: error:") and "\n" not in err


def test_cli_writes_cohort_config_and_montage(tmp_path: Path) -> None:
    montage = tmp_path / "montage.png"
    out = tmp_path / "out"
    argv = [str(out), "--slides", "2", "--cells", "3", "--image-size", "32", "--classes", "3",
            "--montage", str(montage)]
    assert main(argv) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["slides"] == 2 and cfg["classes"] == 3 and cfg["montage"] == str(montage)
    assert len(read_csv(out / "cells.csv")) == 6
    assert {r["label"] for r in read_csv(out / "slides.csv")} <= set(CLASS_NAMES[:3])
    with Image.open(montage) as img:
        assert img.width > 6 * 32 and img.height >= (4 + 1 + 3) * 32
    # the saved config reproduces the cohort
    assert main([str(tmp_path / "again"), "--config", str(out / "config.yaml")]) == 0
    assert (tmp_path / "again" / "cells.csv").read_bytes() == (out / "cells.csv").read_bytes()


def test_montage_api(tmp_path: Path) -> None:
    path = write_montage(tmp_path / "m.png", classes=2, size=32, per_row=2)
    with Image.open(path) as img:
        assert img.size[0] > 2 * 32
