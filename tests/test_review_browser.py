"""Headless Chromium drives ``python -m mil.review``: two raters, keys, clicks, reload, undo.

Uses Playwright with Debian's chromium (``/usr/bin/chromium``; no browser is downloaded).
Skipped when either is absent. Screenshots go to ``$CELLMIL_CI_OUT`` when set.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mil.review.sample import load_sample, rater_order
from tests.test_review import EVIL, make_audit

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and
                 Path(p).is_file()), None)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium at /usr/bin/chromium")]
expect = sync_api.expect
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def start_server(audit: Path, rater: str) -> tuple[subprocess.Popen, str]:
    """``python -m mil.review`` on a free loopback port; (process, URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "mil.review", str(audit), "--rater", rater,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ.copy())
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)
    raise AssertionError(f"mil.review did not start (exit {proc.wait()})")


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    audit = make_audit(tmp_path, n=24)
    procs, urls = [], {}
    try:
        for rater in ("anna", "ben"):
            proc, urls[rater] = start_server(audit, rater)
            procs.append(proc)
        yield audit, urls
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # Ctrl+C, as a rater stops it
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def answers(audit: Path, rater: str) -> list[tuple[str, str, str]]:
    with (audit / "raters" / f"{rater}.csv").open(newline="") as fh:
        return [(r["slide_id"], r["cell_id"], r["label"]) for r in csv.DictReader(fh)]


def test_two_raters_label_by_key_and_click(servers: tuple[Path, dict[str, str]]) -> None:
    audit, urls = servers
    order = rater_order(load_sample(audit), "anna")
    key = [c.key for c in order]
    shots = Path(os.environ.get("CELLMIL_CI_OUT") or audit.parent)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        anna = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        ben = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        problems: list[str] = []
        for page in (anna, ben):
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
        anna.goto(urls["anna"])
        anna.wait_for_selector("body[data-ready='1']")
        assert anna.text_content("#progress") == "0 / 24"
        for k in "bnux":
            anna.keyboard.press(k)
        expect(anna.locator("#progress")).to_have_text("4 / 24")
        anna.keyboard.press("z")  # undo the 'x' of the 4th cell
        expect(anna.locator("#progress")).to_have_text("3 / 24")
        assert answers(audit, "anna") == [(*key[0], "blast"), (*key[1], "non-blast"),
                                          (*key[2], "unsure")]
        ben.goto(urls["ben"])  # the second rater works beside the first
        ben.wait_for_selector("body[data-ready='1']")
        ben.keyboard.press("n")
        ben.keyboard.press("n")
        expect(ben.locator("#progress")).to_have_text("2 / 24")
        anna.reload()
        anna.wait_for_selector("body[data-ready='1']")
        assert anna.text_content("#progress") == "3 / 24"  # progress kept
        assert anna.text_content("#pos") == "4"  # resumed at the first unanswered cell
        anna.click("button.ans.unusable")  # by click this time
        expect(anna.locator("#progress")).to_have_text("4 / 24")
        evil = key.index(next(k for k in key if k[1] == EVIL))
        for _ in range(evil - 4):
            anna.keyboard.press("ArrowRight")
        for _ in range(4 - evil):
            anna.keyboard.press("ArrowLeft")
        expect(anna.locator("#cellid")).to_have_text(EVIL)  # shown as text, never run
        anna.wait_for_load_state("networkidle")
        assert anna.evaluate("[...document.querySelectorAll('#strip img')]"
                             ".map(i => i.complete && i.naturalWidth > 0)") == [True] * 4
        anna.screenshot(path=str(shots / "review_cell.png"))
        anna.keyboard.press("g")
        # in the gallery, one click moves the non-blast cell (key[1]) to blast
        anna.click("section[data-label='non-blast'] button.mini.blast")
        expect(anna.locator("section[data-label='blast'] h2")).to_have_text("Blast (2)")
        expect(anna.locator("section[data-label='non-blast']")).to_have_count(1)
        expect(anna.locator("section[data-label='non-blast'] figure")).to_have_count(0)
        anna.screenshot(path=str(shots / "review_gallery.png"), full_page=True)
        browser.close()
    expected = {key[0]: "blast", key[1]: "blast", key[2]: "unsure", key[3]: "unusable"}
    assert dict(((s, c), lab) for s, c, lab in answers(audit, "anna")) == expected
    assert answers(audit, "ben") == [(*c.key, "non-blast") for c in rater_order(
        load_sample(audit), "ben")[:2]]
    assert problems == [], problems
