"""Headless Chromium opens the attention index from file:// with no console errors.

Skipped when no Chromium is installed (CI installs the Debian ``chromium`` package). The
screenshots go to ``$CELLMIL_CI_OUT/heatmap_index.png`` and ``heatmap_cohort.png`` (the report
of a real run, cohort page on top) when that is set, else to tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mil.explain.attention import SlideAttention
from mil.explain.export import SlideExport, export_slide
from mil.explain.report import write_index

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH")
EVIL = "<script>alert(1)</script>"


def _open(page: Path, shot: Path, profile: Path, height: int = 900) -> tuple[str, list[str]]:
    """(DOM after load, console lines) of ``page`` opened from a file:// URL; writes ``shot``.
    Every host name resolves to nothing, so a network request would fail loudly on the console."""
    cmd = [str(BROWSER), "--headless", "--host-resolver-rules=MAP * ~NOTFOUND", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           f"--screenshot={shot}", "--dump-dom", f"--window-size=1200,{height}",
           page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=profile.parent)
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    return res.stdout, console


def _export(out: Path) -> list[SlideExport]:
    """Three small slides with real cell images (one missing), odd ids included."""
    src = out.parent / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for s, sid in enumerate([EVIL, "a/../../b %x", "slide 3"]):
        paths = [f"{s}_{i}.png" for i in range(6)]
        for p in paths[:-1] if s == 0 else paths:
            Image.new("RGB", (16, 16), tuple(int(v) for v in rng.integers(0, 255, 3))).save(src / p)
        sa = SlideAttention(sid, ["A", "B"], np.array([0.2, 0.8]), rng.dirichlet(np.ones(6))[:, None],
                            [f"c{i}" for i in range(6)], paths, truth="B" if s else "A",
                            coords=rng.uniform(0, 9, (6, 2)), blast_prob=rng.uniform(size=6))
        rows.append(export_slide(sa, out, source=src, top_k=2))
    return rows


def test_index_opens_without_console_errors(tmp_path: Path) -> None:
    out = tmp_path / "export"
    rows = _export(out)
    page = write_index(out, rows, title="synthetic run")
    ci = os.environ.get("CELLMIL_CI_OUT")
    shot = Path(ci) / "heatmap_index.png" if ci else tmp_path / "index.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    dom, console = _open(page, shot, tmp_path / "profile")
    assert console == [], console
    assert 'data-broken-images="0"' in dom  # our script ran and every thumbnail loaded
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # the id stayed text
    assert Image.open(shot).size == (1200, 900)


def test_console_errors_are_detected(tmp_path: Path) -> None:
    """Negative control: a broken thumbnail must show up as a console line."""
    files = {"thumb": "thumb.png", "gallery": "gallery.png"}
    page = write_index(tmp_path, [SlideExport("gone", "gone", "A", "A", 0.9, 1, 0, files)])
    _, console = _open(page, tmp_path / "shot.png", tmp_path / "profile")
    assert any("image not found" in ln for ln in console), console


def test_cohort_page_renders_offline(fit_run, tmp_path: Path) -> None:
    """A run's report: the cohort page (confusion matrix, ROC, calibration, least-sure slides)
    above the slide table, no network request, every image and link inside the folder."""
    from mil.explain.run import export_run

    out = tmp_path / "report"
    export_run(fit_run["out"], None, out)
    page = out / "index.html"
    html = page.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:|//)', html) and "http" not in html
    ci = os.environ.get("CELLMIL_CI_OUT")
    shot = Path(ci) / "heatmap_cohort.png" if ci else tmp_path / "cohort.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    dom, console = _open(page, shot, tmp_path / "profile", height=1400)
    assert console == [], console
    assert 'id="cohort"' in dom and dom.index('id="cohort"') < dom.index('id="slides"')
    assert dom.count("<svg") >= 2 and "Least sure" in dom
    assert 'data-broken-images="0"' in dom
    assert Image.open(shot).size == (1200, 1400)
