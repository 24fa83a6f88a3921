"""mil.review through Flask's test client: blinding, answers, resume, undo, token, path safety."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil.blast import cli as blast
from mil.blast.folder import check_rater_name
from mil.errors import CliError
from mil.review import answers as answers_mod
from mil.review.app import create_app
from mil.review.cli import is_loopback
from mil.review.cli import main as review_main
from mil.review.sample import load_sample, rater_order
from mil.store import open_store

EVIL = "<script>alert(1)</script>"


def make_audit(root: Path, *, slides: int = 3, cells: int = 10, n: int = 20,
               coords: bool = True) -> Path:
    """A store of synthetic cell images (one cell id is markup) audited by ``mil.blast audit``."""
    from mil.synth.cells import CELL_TYPES, render_cell

    rng = np.random.default_rng(0)
    src = root / "images"
    with open_store(root / "s.h5", "a") as st:
        st.init({"backbone": "test", "feature_dim": 4, "dtype": "float16", "image_size": 32,
                 "weights": {"source": "none", "sha256": None}, "weights_sha256": "none"})
        for s in range(slides):
            sid = f"S{s:02d}"
            (src / sid).mkdir(parents=True, exist_ok=True)
            ids = [EVIL if (s, j) == (0, 0) else f"c{j:03d}" for j in range(cells)]
            paths = [f"{sid}/{j}.png" for j in range(cells)]
            for j, p in enumerate(paths):
                kind = CELL_TYPES[(s + j) % len(CELL_TYPES)]
                Image.fromarray(render_cell(rng, kind, size=96)).save(src / p)
            st.write_slide(sid, rng.normal(size=(cells, 4)).astype(np.float16), ids, paths,
                           coords=rng.uniform(0, 50, (cells, 2)).astype(np.float32)
                           if coords else None)
            st.write_annotation(sid, "blast_prob", rng.uniform(size=cells).astype(np.float32))
    out = root / "audit"
    assert blast.main(["audit", str(root / "s.h5"), "--n", str(n), "--out", str(out),
                       "--source", str(src), "--neighbours", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def audit_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_audit(tmp_path_factory.mktemp("review"))


@pytest.fixture()
def audit(audit_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of one audit folder (its source images stay where they are)."""
    shutil.copytree(audit_template, tmp_path / "audit")
    return tmp_path / "audit"


def client(folder: Path, rater: str = "anna", **kw):
    app = create_app(folder, rater, **kw)
    return app, app.test_client()


def rater_rows(folder: Path, rater: str = "anna") -> list[dict[str, str]]:
    with (folder / "raters" / f"{rater}.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_blinded_everywhere(audit: Path) -> None:
    key = list(csv.DictReader((audit / "key.csv").open()))
    probs = [r["blast_prob"] for r in key] + [r["blast_prob"][:4] for r in key]
    app, c = client(audit)
    texts = [c.get(u).get_data(as_text=True) for u in
             ("/", "/api/state", "/static/review.js", "/static/review.css")]
    texts.append((audit / "review.csv").read_text())
    texts.append((audit / "index.html").read_text())
    for t in texts:
        assert "predicted" not in t and "blast_prob" not in t and "key.csv" not in t
        assert not any(p in t for p in probs)
    state = json.loads(texts[1])
    assert set(state["cells"][0]) == {"i", "slide_id", "cell_id", "label", "neighbours"}
    assert EVIL in [x["cell_id"] for x in state["cells"]]  # data, never markup in the page
    assert EVIL not in texts[0]
    for i in range(state["n"]):
        r = c.get(f"/img/{i}")
        assert r.status_code == 200 and r.mimetype == "image/png"
        assert c.get(f"/img/{i}/n/1").status_code == 200
        assert c.get(f"/thumb/{i}").status_code == 200
    # a sheet written before blinding: its predicted/blast_prob columns are never read
    rows = list(csv.DictReader((audit / "review.csv").open()))
    with (audit / "review.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["row", "slide_id", "cell_id", "path", "predicted", "blast_prob",
                                "expert"])
        w.writeheader()
        w.writerows([{**r, "predicted": k["predicted"], "blast_prob": k["blast_prob"]}
                     for r, k in zip(rows, key, strict=True)])
    app.config["RATER_ANSWERS"].close()
    _, c = client(audit)
    text = c.get("/api/state").get_data(as_text=True)
    assert "blast_prob" not in text and not any(p in text for p in probs)


def test_answer_undo_resume_and_files(audit: Path) -> None:
    app, c = client(audit)
    order = rater_order(load_sample(audit), "anna")
    for i, label in enumerate(["blast", "non-blast", "unsure", "unusable"]):
        r = c.post("/api/answer", json={"i": i, "label": label})
        assert r.status_code == 200 and r.json["answered"] == i + 1
    rows = rater_rows(audit)
    assert [(r["slide_id"], r["cell_id"], r["label"]) for r in rows] == [
        (*order[i].key, lab) for i, lab in enumerate(["blast", "non-blast", "unsure", "unusable"])]
    assert all(r["answered_at"].endswith("+00:00") for r in rows)
    assert c.post("/api/answer", json={"i": 1, "label": "blast"}).json["answered"] == 4  # change
    assert c.post("/api/undo", json={}).json == {"i": 1, "label": "non-blast", "answered": 4}
    assert c.post("/api/undo", json={}).json == {"i": 3, "label": None, "answered": 3}
    assert not list((audit / "raters").glob(".*.tmp"))
    app.config["RATER_ANSWERS"].close()  # the server stops; a new one resumes
    app, c = client(audit)
    state = c.get("/api/state").json
    assert state["start"] == 3 and state["answered"] == 3
    assert [x["label"] for x in state["cells"][:4]] == ["blast", "non-blast", "unsure", None]
    assert c.post("/api/undo", json={}).json["i"] == 2  # the undo stack survived the restart
    assert len(rater_rows(audit)) == 2
    history = list(csv.DictReader((audit / "raters" / "history" / "anna.csv").open()))
    assert [h["action"] for h in history] == ["set"] * 5 + ["undo"] * 3


def test_writes_are_atomic(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, c = client(audit)
    c.post("/api/answer", json={"i": 0, "label": "blast"})
    before = (audit / "raters" / "anna.csv").read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(answers_mod.os, "replace", crash)
    with pytest.raises(OSError):
        app.config["RATER_ANSWERS"].set(load_sample(audit)[0].key, "unsure")
    assert (audit / "raters" / "anna.csv").read_bytes() == before  # old file whole
    monkeypatch.setattr(answers_mod.os, "replace", os.replace)


def test_two_raters_have_their_own_order_and_file(audit: Path) -> None:
    cells = load_sample(audit)
    anna, ben = rater_order(cells, "anna"), rater_order(cells, "ben")
    assert anna == rater_order(cells, "anna") and anna != ben and anna != cells
    assert sorted(c.row for c in anna) == sorted(c.row for c in ben)
    _, ca = client(audit, "anna")
    _, cb = client(audit, "ben")
    ca.post("/api/answer", json={"i": 0, "label": "blast"})
    cb.post("/api/answer", json={"i": 0, "label": "unsure"})
    assert rater_rows(audit, "anna")[0]["label"] == "blast"
    assert rater_rows(audit, "ben")[0]["label"] == "unsure"
    with pytest.raises(CliError, match="already being served"):
        create_app(audit, "anna")


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "a b", ".hidden", "x" * 41, "a\\b",
                                  "anna.csv", "é"])
def test_hostile_rater_names(name: str) -> None:
    with pytest.raises(CliError, match="plain word"):
        check_rater_name(name)


def test_cli_refuses_a_hostile_name(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert review_main([str(audit), "--rater", "../../etc/passwd", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plain word" in err[0]
    assert not list(audit.parent.rglob("passwd*")) and not (audit / "raters").exists()


def test_token_required_off_loopback(audit: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    _, c = client(audit, token="s3cret-token")
    assert c.get("/").status_code == 403
    assert c.get("/api/state").status_code == 403
    assert c.get("/img/0").status_code == 403
    assert c.get("/?token=wrong").status_code == 403
    assert c.post("/api/answer", json={"i": 0, "label": "blast"}).status_code == 403
    r = c.get("/?token=s3cret-token")
    assert r.status_code == 302 and "HttpOnly" in r.headers["Set-Cookie"]
    assert c.get("/api/state").status_code == 200  # the cookie carries it from now on
    assert c.post("/api/answer", json={"i": 0, "label": "blast"}).status_code == 200
    assert len(rater_rows(audit)) == 1


def test_path_safety_and_request_checks(audit: Path) -> None:
    _, c = client(audit)
    n = c.get("/api/state").json["n"]
    for url in (f"/img/{n}", f"/thumb/{n}", "/img/-1", "/img/0/n/0", "/img/0/n/5", "/img/..%2Fkey.csv",
                "/img/0/../../key.csv", "/static/../app.py", "/static/%2e%2e/answers.py",
                "/key.csv", "/raters/anna.csv"):
        r = c.get(url)
        assert r.status_code in (404, 308) and b"blast_prob" not in r.data, url
    assert c.post("/api/answer", json={"i": n, "label": "blast"}).status_code == 404
    assert c.post("/api/answer", json={"i": 0, "label": "maybe"}).status_code == 400
    assert c.post("/api/answer", json={"i": "0", "label": "blast"}).status_code == 400
    assert c.post("/api/answer", data={"i": 0, "label": "blast"}).status_code == 403  # a form
    assert c.post("/api/answer", json={"i": 0, "label": "blast"},
                  headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.get("/", headers={"Host": "evil.example:8765"}).status_code == 403  # rebinding
    r = c.get("/")
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert not (audit / "raters" / "anna.csv").exists()


def test_images_fall_back_to_the_audit_copies(tmp_path: Path) -> None:
    audit = make_audit(tmp_path, coords=False, n=6)
    for p in (tmp_path / "images").rglob("*.png"):
        p.unlink()  # the folder travels without the source images
    _, c = client(audit)
    r = c.get("/img/0")
    assert r.status_code == 200 and Image.open(__import__("io").BytesIO(r.data)).size[0] == 96
    assert len(load_sample(audit)[0].neighbours) == 4
