"""The cohort page of the HTML report (no browser needed; tests/test_browser.py opens it)."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from mil.explain.cohort import cohort_section, roc_points
from mil.stats import auroc


def test_roc_points_give_the_auroc() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50).astype(bool)
    s = rng.uniform(size=50) + 0.5 * y
    fpr, tpr = roc_points(y, s)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, s))


def _links(html: str) -> list[str]:
    return [unquote(unescape(h)) for h in re.findall(r'href="([^"]+)"', html)]


def test_report_of_a_run_starts_with_the_cohort_page(fit_run, tmp_path: Path) -> None:
    from mil.explain.run import export_run

    out = tmp_path / "report"
    rows = export_run(fit_run["out"], None, out)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.index('id="cohort"') < html.index('id="slides"')
    m = json.loads((fit_run["out"] / "metrics.json").read_text())
    cm = m["decision"]["cross_fitted"]["confusion"]
    cells = re.findall(r"<td class=\"(?:diag)?\">(\d+)</td>", html.split('id="slides"')[0])
    assert [int(c) for c in cells] == [v for row in cm for v in row]
    assert "AUROC" in html and "reliability: top label" in html
    least = html.split("Least sure")[1].split("</ol>")[0]
    links = _links(least)
    assert len(links) == min(10, len(rows)) and all((out / h).is_file() for h in links)
    lowest = min(r.probability for r in rows)
    assert f"p = {lowest:.3f}" in least.split("</li>")[0]


def test_multilabel_cohort_page_has_a_table_and_curve_per_target(tmp_path: Path) -> None:
    from tests.test_panel import TARGETS

    run = tmp_path / "run"
    run.mkdir()
    lines = ["slide_id," + ",".join(f"truth_{t}" for t in TARGETS) + ","
             + ",".join(f"prob_{t}" for t in TARGETS) + "," + ",".join(f"call_{t}" for t in TARGETS)]
    rng = np.random.default_rng(0)
    for i in range(12):
        y = rng.integers(0, 2, 3)
        p = np.clip(y * 0.5 + rng.uniform(0, 0.5, 3), 0, 1)
        truth = ["" if (i == 0 and j == 2) else str(v) for j, v in enumerate(y)]
        lines.append(f"S{i}," + ",".join(truth) + "," + ",".join(f"{v:.3f}" for v in p) + ","
                     + ",".join(str(int(v >= 0.5)) for v in p))
    (run / "predictions.csv").write_text("\n".join(lines) + "\n")
    (run / "metrics.json").write_text(json.dumps({"task": "multilabel", "targets": TARGETS,
                                                  "pooled": {}}))
    html = cohort_section(run, [])
    assert all(f"<figcaption>{t}</figcaption>" in html for t in TARGETS)
    assert html.count("AUROC") == 3 and "no calibration record" in html
    cebpa = html.split("<figcaption>CEBPA</figcaption>")[1].split("</table>")[0]
    assert sum(int(c) for c in re.findall(r">(\d+)</td>", cebpa)) == 11  # the unknown left out
