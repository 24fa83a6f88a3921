import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.blast import cli as blast
from mil.blast.audit import BLAST, NONBLAST, SampledCell, stratified_sample
from mil.blast.gallery import gallery_html
from mil.blast.model import grouped_folds, load_filter
from mil.errors import CliError
from mil.store import BLAST_PROB, open_store
from tests.conftest import make_store

FAST = ["--epochs", "60", "--bootstrap", "20", "--folds", "3"]


def planted_store(path: Path, *, slides: int = 6, cells: int = 30, dim: int = 8,
                  seed: int = 0, backbone: str = "test") -> dict[tuple[str, str], int]:
    """A store whose blasts are shifted by +3 in the first 2 dims; returns the true labels."""
    rng = np.random.default_rng(seed)
    truth = {}
    with open_store(path, "a") as st:
        st.init({"backbone": backbone, "feature_dim": dim, "dtype": "float16", "image_size": 32,
                 "weights": {"source": "none", "sha256": None}, "weights_sha256": "none"})
        for i in range(slides):
            y = (rng.uniform(size=cells) < 0.2 + 0.6 * i / slides).astype(int)
            f = rng.normal(size=(cells, dim))
            f[:, :2] += 3.0 * y[:, None]
            ids = [f"c{j:03d}" for j in range(cells)]
            sid = f"S{i:02d}"
            st.write_slide(sid, f.astype(np.float16), ids, [f"{sid}/{c}.png" for c in ids])
            truth.update({(sid, c): int(v) for c, v in zip(ids, y, strict=True)})
    return truth


def write_labels(path: Path, labels: dict[tuple[str, str], int], words: bool = True) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_id", "cell_id", "label"])
        for (s, c), y in labels.items():
            w.writerow([s, c, ("Blast" if y else "NON-BLAST") if words else y])
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One planted h5 store and a filter fitted on it (shared: fitting takes seconds)."""
    d = tmp_path_factory.mktemp("fit")
    truth = planted_store(d / "s.h5")
    labels = write_labels(d / "labels.csv", truth)
    assert blast.main(["fit", str(d / "s.h5"), "--labels", str(labels),
                       "--out", str(d / "f.pt"), *FAST]) == 0
    return d / "s.h5", d / "f.pt", truth


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert blast.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mil.blast: error:")
    return err[0]


def test_grouped_folds_never_leak_a_slide() -> None:
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 17, 500)
    y = rng.integers(0, 2, 500)
    for seed in range(5):
        folds = grouped_folds(groups, y, k=5, seed=seed)
        for g in np.unique(groups):
            assert len(np.unique(folds[groups == g])) == 1
        assert set(folds) == set(range(5))
    with pytest.raises(CliError, match="slide-grouped folds"):
        grouped_folds(np.array([0, 1]), np.array([0, 1]), k=3)


def test_fit_learns_planted_blasts(fitted: tuple[Path, Path, dict]) -> None:
    store, flt, _ = fitted
    metrics = json.loads(flt.with_suffix(".metrics.json").read_text())
    assert metrics["accuracy"]["value"] > 0.9 and metrics["auroc"]["value"] > 0.95
    lo, hi = metrics["accuracy"]["ci"]
    assert lo <= metrics["accuracy"]["value"] <= hi
    assert flt.with_suffix(".config.yaml").is_file()
    obj = torch.load(flt, weights_only=True)  # plain tensors and data only
    assert obj["provenance"]["backbone"] == "test" and obj["temperature"] > 0
    assert obj["metrics"]["n_cells"] == 180


def test_loading_a_pickled_object_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pt"
    torch.save({"format": "cellmil.blastfilter/1", "x": argparse.Namespace(a=1)}, bad)
    with pytest.raises(CliError, match="not a loadable blast filter"):
        load_filter(bad)


def test_predict_keeps_features_bit_identical_and_resumes(
    tmp_path: Path, store_suffix: str, fitted: tuple[Path, Path, dict]
) -> None:
    _, flt, _ = fitted
    path = tmp_path / f"p.{store_suffix}"
    planted_store(path, slides=3, cells=10)
    with open_store(path) as st:
        before = {s: st.features(s).tobytes() for s in st.slides()}
    feature_files = sorted(path.glob("slides/*/features/**/*")) if store_suffix == "zarr" else []
    raw = {p: p.read_bytes() for p in feature_files if p.is_file()}
    assert raw or store_suffix == "h5"  # zarr: the chunk files themselves are compared too
    assert blast.main(["predict", str(path), "--filter", str(flt)]) == 0
    with open_store(path, "a") as st:
        assert {s: st.features(s).tobytes() for s in st.slides()} == before
        probs = st.annotation("S00", BLAST_PROB)
        assert probs.dtype == np.float32 and probs.shape == (10,)
        written = st.annotation_attrs("S00", BLAST_PROB)["written"]
        st.write_slide("NEW", np.ones((4, 8), np.float16), list("abcd"), list("abcd"))
    assert {p: p.read_bytes() for p in raw} == raw
    from mil.blast.annotate import predict

    assert predict(str(path), str(flt)) == {"done": 3, "written": 1, "replaced": 0}
    assert predict(str(path), str(flt)) == {"done": 4, "written": 0, "replaced": 0}
    with open_store(path) as st:
        assert st.annotation_attrs("S00", BLAST_PROB)["written"] == written


def test_predict_refuses_other_filter_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fitted: tuple[Path, Path, dict]
) -> None:
    _, flt, _ = fitted
    path = tmp_path / "o.h5"
    planted_store(path, slides=2, cells=5)
    with open_store(path, "a") as st:
        st.write_annotation("S00", BLAST_PROB, np.zeros(5, np.float32), {"filter_sha256": "x"})
    err = one_line_error(capsys, ["predict", str(path), "--filter", str(flt)])
    assert "--overwrite" in err
    assert blast.main(["predict", str(path), "--filter", str(flt), "--overwrite"]) == 0


def test_filter_refused_on_other_backbone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fitted: tuple[Path, Path, dict]
) -> None:
    _, flt, _ = fitted
    path = tmp_path / "other.h5"
    planted_store(path, slides=2, cells=5, backbone="resnet50")
    err = one_line_error(capsys, ["predict", str(path), "--filter", str(flt)])
    assert "'test'" in err and "'resnet50'" in err


@pytest.mark.parametrize("content, match", [
    ("slide_id,cell_id,label\nS00,c000,maybe\n", "row 2: unknown label 'maybe'"),
    ("slide_id,cell\nS00,c000\n", "missing column"),
    ("slide_id,cell_id,label\nS00,c000,1\nS00,c000,0\n", "labelled twice"),
    ("slide_id,cell_id,label\nS00,c000,1\nS99,c000,0\n", "absent slide"),
    ("slide_id,cell_id,label\nS00,c999,1\n", "cell 'c999'"),
])
def test_bad_label_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fitted: tuple[Path, Path, dict],
    content: str, match: str,
) -> None:
    store, _, _ = fitted
    labels = tmp_path / "bad.csv"
    labels.write_text(content)
    err = one_line_error(capsys, ["fit", str(store), "--labels", str(labels),
                                  "--out", str(tmp_path / "f.pt")])
    assert match in err and ("bad.csv" in err)


def test_stratified_sample_reproducible_and_balanced() -> None:
    rng = np.random.default_rng(0)
    probs = [rng.uniform(0, 0.6, size=50) for _ in range(4)]  # few predicted blasts
    a, b = stratified_sample(probs, 40, seed=1), stratified_sample(probs, 40, seed=1)
    assert a == b != stratified_sample(probs, 40, seed=2)
    assert len(set(a)) == 40
    blasts = sum(probs[s][c] >= 0.5 for s, c in a)
    n_blast = sum(int((p >= 0.5).sum()) for p in probs)
    assert blasts == min(20, n_blast) and len({s for s, _ in a}) == 4
    short = stratified_sample([np.array([0.9, 0.1, 0.2, 0.3])], 3, seed=0)
    assert sorted(short) == [(0, 0), (0, 1), (0, 2)] or len(short) == 3


def test_audit_and_score_by_hand(tmp_path: Path, store_suffix: str) -> None:
    path = tmp_path / f"a.{store_suffix}"
    make_store(path, slides=3, cells=20, blast_prob=True).close()
    img_root = tmp_path / "imgs"
    (img_root / "S00").mkdir(parents=True)
    from PIL import Image

    for j in range(20):
        Image.new("RGB", (20, 20), (255, 0, 0)).save(img_root / "S00" / f"c{j:03d}.png")
    out = tmp_path / "audit"
    assert blast.main(["audit", str(path), "--n", "10", "--out", str(out), "--seed", "4",
                       "--source", str(img_root)]) == 0
    rows = list(csv.DictReader((out / "review.csv").open()))
    key = list(csv.DictReader((out / "key.csv").open()))
    meta = json.loads((out / "review.json").read_text())
    assert list(rows[0]) == ["row", "slide_id", "cell_id", "path", "expert"]  # blinded
    assert [(r["slide_id"], r["cell_id"]) for r in rows] == [(r["slide_id"], r["cell_id"])
                                                             for r in key]
    assert len(rows) == 10 and sum(r["predicted"] == BLAST for r in key) == 5
    page = (out / "index.html").read_text()
    assert not re.search(r"\d\.\d", page) and "non-blast (" not in page  # no call, no prob
    assert (out / "index.html").is_file() and (out / "sheet_001.png").is_file()
    assert meta["strategy"] == "stratified" and meta["blinded"] is True
    assert meta["predicted_count"][BLAST] + meta["predicted_count"][NONBLAST] == 60
    # hand case, a sheet written before blinding (predicted and blast_prob beside each cell):
    # shares 0.2 / 0.8; blast stratum 2/10 wrong, non-blast 1/10 wrong -> 0.12
    (out / "review.json").write_text(json.dumps({"predicted_share": {BLAST: 0.2, NONBLAST: 0.8}}))
    with (out / "review.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "slide_id", "cell_id", "path", "predicted", "blast_prob", "expert"])
        for i in range(10):
            w.writerow([i, "S", f"b{i}", "", BLAST, 0.9, NONBLAST if i < 2 else "Blast"])
            w.writerow([i, "S", f"n{i}", "", NONBLAST, 0.1, "1" if i < 1 else "non-blast"])
        w.writerow([99, "S", "x", "", BLAST, 0.9, ""])
    assert blast.main(["audit", "--score", str(out / "review.csv")]) == 0
    res = json.loads((out / "noise.json").read_text())
    assert res["error_rate"] == pytest.approx(0.12) and res["n"] == 20
    assert res["blast_error_rate"] == 0.2 and res["nonblast_error_rate"] == 0.1
    assert res["skipped_empty"] == 1 and res["ci"][0] < 0.12 < res["ci"][1]
    assert res["unweighted_error_rate"] == pytest.approx(0.15)


def test_score_unknown_expert_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sheet = tmp_path / "review.csv"
    sheet.write_text("row,predicted,expert\n1,blast,blast\n2,blast,perhaps\n")
    (tmp_path / "review.json").write_text(json.dumps({"predicted_share": {BLAST: .5,
                                                                          NONBLAST: .5}}))
    err = one_line_error(capsys, ["audit", "--score", str(sheet)])
    assert "row 3" in err and "'perhaps'" in err


def test_missing_images_become_placeholders(tmp_path: Path) -> None:
    from mil.blast.gallery import write_gallery

    cells = [SampledCell(1, "S", "c", "nope.png", 0.7), SampledCell(2, "S", "d", "x.png", 0.2)]
    stats = write_gallery(tmp_path, cells, tmp_path / "missing_root")
    assert stats == {"found": 0, "missing": 2, "sheets": 1}
    assert (tmp_path / "cells" / "00001.png").is_file()


def test_html_escapes_data() -> None:
    evil = '<script>alert("x")</script>&'
    page = gallery_html([SampledCell(1, evil, evil, evil, 0.9)])
    assert "<script" not in page and "&lt;script&gt;" in page and "&amp;" in page
    assert "http" not in page  # nothing remote
