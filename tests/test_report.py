"""The offline HTML index: escaped, self-contained, relative links that resolve."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from mil.explain.attention import SlideAttention
from mil.explain.export import SlideExport, export_slide
from mil.explain.report import render_index, write_index

EVIL = "<script>alert(1)</script>"


def _rows() -> list[SlideExport]:
    files = {"gallery": "gallery.png", "mosaic": "mosaic.png", "table": "attention.csv", "thumb": "thumb.png"}
    return [SlideExport(EVIL, "%3Cscript", 'B"><img src=x>', "A&B", 0.75, 10, 2, files),
            SlideExport("s 2", "s%202", None, "A", 0.5, 3, 0, files)]


def test_data_strings_are_escaped() -> None:
    page = render_index(_rows(), title="run <b>")
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x>" not in page and "A&amp;B" in page
    assert "run &lt;b&gt;" in page
    assert page.count("<script>") == 1  # only our own inline script


def test_no_external_references() -> None:
    page = render_index(_rows(), title="t")
    assert "http://" not in page and "https://" not in page
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert not ref.startswith(("/", "//")) and ":" not in ref, ref
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_links_resolve_to_written_files(tmp_path: Path) -> None:
    sa = SlideAttention("a/../../b %x", ["A", "B"], np.array([0.3, 0.7]), np.full((3, 1), 1 / 3),
                        ["c0", "c1", "c2"], ["p0.png", "p1.png", "p2.png"], truth="B")
    row = export_slide(sa, tmp_path, top_k=1)
    page = write_index(tmp_path, [row]).read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(refs) >= 4
    for ref in refs:
        target = (tmp_path / unquote(ref.replace("&amp;", "&"))).resolve()
        assert target.is_file() and target.parent.parent == tmp_path.resolve(), ref
