"""The offline HTML index of an attention export: one self-contained page, relative links only.

No external scripts, styles, fonts or URLs; every string that comes from data is escaped with
:func:`html.escape`; links are percent-quoted folder names (a safe name may hold ``%``), so the
page works when opened from the file system or copied elsewhere with its folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from urllib.parse import quote

from mil.explain.export import SlideExport

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { cursor: pointer; background: #f3f3f3; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.wrong td.pred { color: #b00; font-weight: bold; }
img.thumb { width: 96px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
.meta { color: #555; }
td.warn { color: #b00; font-weight: bold; }
"""

# Table sorting by header click; on load, report images that failed to load on the console.
SCRIPT = """
(function () {
  var table = document.getElementById('slides');
  var heads = table.tHead.rows[0].cells;
  function key(row, col) {
    var c = row.cells[col];
    var v = c.getAttribute('data-sort');
    if (v === null) { v = c.textContent.trim(); }
    var n = parseFloat(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(col) {
    var th = heads[col];
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute('aria-sort'); }
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      var r = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener('click', sortBy.bind(null, i));
  }
  window.addEventListener('load', function () {
    var bad = 0;
    Array.prototype.forEach.call(document.images, function (im) {
      if (im.naturalWidth === 0) { bad++; console.error('image not found: ' + im.getAttribute('src')); }
    });
    document.body.setAttribute('data-broken-images', String(bad));
  });
})();
"""


LINK_ORDER = ["gallery", "mosaic", "map", "table"]


def _link(folder: str, name: str) -> str:
    """A relative, percent-quoted, attribute-escaped href to ``folder/name``."""
    return escape(quote(folder, safe="") + "/" + quote(name), quote=True)


def _row(r: SlideExport) -> str:
    truth = r.truth or ""
    wrong = bool(truth) and truth != r.prediction
    order = sorted((k for k in r.files if k != "thumb"),
                   key=lambda k: LINK_ORDER.index(k) if k in LINK_ORDER else len(LINK_ORDER))
    links = " ".join(f'<a href="{_link(r.folder, r.files[k])}">{escape(k)}</a>' for k in order)
    thumb = ""
    if "thumb" in r.files:
        target = _link(r.folder, r.files.get("mosaic", r.files["thumb"]))
        thumb = (f'<a href="{target}"><img class="thumb" src="{_link(r.folder, r.files["thumb"])}" '
                 f'alt="attention mosaic of {escape(r.slide_id, quote=True)}"></a>')
    cells = [
        f"<td>{escape(r.slide_id)}</td>",
        f"<td>{escape(truth) if truth else '<i>unknown</i>'}</td>",
        f'<td class="pred">{escape(r.prediction)}</td>',
        f'<td class="num">{r.probability:.3f}</td>',
        f"<td>{'' if not truth else ('no' if wrong else 'yes')}</td>",
        f'<td class="num">{r.n_cells}</td>',
        f'<td class="num{" warn" if r.n_missing else ""}">{r.n_missing}</td>',
        f"<td>{thumb}</td>",
        f"<td>{links}</td>",
    ]
    return f'<tr class="{"wrong" if wrong else "ok"}">' + "".join(cells) + "</tr>"


def render_index(rows: Sequence[SlideExport], *, title: str, notes: Sequence[str] = (),
                 cohort: str = "") -> str:
    """The whole index page as a string; ``cohort``: the cohort section's HTML
    (:func:`mil.explain.cohort.cohort_section`), placed first."""
    n_truth = sum(1 for r in rows if r.truth)
    n_right = sum(1 for r in rows if r.truth and r.truth == r.prediction)
    acc = f"{n_right}/{n_truth} correct" if n_truth else "no true labels given"
    head = ["slide", "truth", "prediction", "probability", "correct", "cells",
            "missing images", "mosaic", "files"]
    notes_html = "".join(f'<p class="meta">{escape(n)}</p>' for n in notes)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        cohort,
        f'<p class="meta">{len(rows)} slides, {acc}; written {stamp}. Click a column to sort; '
        "click a thumbnail for the full mosaic.</p>",
        notes_html,
        '<table id="slides"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>",
        "<tbody>", *(_row(r) for r in rows), "</tbody></table>",
        f"<script>{SCRIPT}</script>",
        "</body></html>",
    ])


def write_index(out: Path, rows: Sequence[SlideExport], *, title: str = "cellmil attention export",
                notes: Sequence[str] = (), cohort: str = "") -> Path:
    """Write ``out/index.html`` and return its path."""
    path = Path(out) / "index.html"
    path.write_text(render_index(rows, title=title, notes=notes, cohort=cohort),
                    encoding="utf-8")
    return path
