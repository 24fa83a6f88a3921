import csv
from pathlib import Path

import pytest

from mil import demo


def test_fill_review_from_truth(tmp_path: Path) -> None:
    cells = tmp_path / "cells.csv"
    cells.write_text("slide_id,cell_id,path,cell_type,is_blast,shows_cue\n"
                     "S0,a,S0/a.png,blast,1,0\nS0,b,S0/b.png,neutrophil,0,0\n")
    sheet = tmp_path / "review.csv"
    sheet.write_text("row,slide_id,cell_id,path,predicted,blast_prob,expert\n"
                     "1,S0,b,S0/b.png,blast,0.7,\n2,S0,a,S0/a.png,blast,0.9,\n")
    assert demo.fill_review_from_truth(sheet, cells) == 2
    rows = list(csv.DictReader(sheet.open()))
    assert [r["expert"] for r in rows] == ["non-blast", "blast"]
    assert rows[0]["blast_prob"] == "0.7"  # other columns untouched


def test_quick_sizes_and_overrides() -> None:
    (qs, qc, qe), (fs, fc, fe) = demo.DemoConfig(quick=True).sizes(), demo.DemoConfig().sizes()
    assert qs * qc < fs * fc and qe < fe
    assert demo.DemoConfig(quick=True, slides=12, epochs=3).sizes()[::2] == (12, 3)


def test_failed_stage_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mil.cli import Command
    from mil.synth import cli as synth_cli

    failing = Command("synth", "fails", run=lambda args: 2, config=synth_cli.SynthConfig,
                      arguments=lambda p: p.add_argument("out"))
    monkeypatch.setattr(synth_cli, "COMMAND", failing)
    assert demo.main(["--out", str(tmp_path / "d"), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "mil.demo: error: stage mil.synth failed with exit code 2"
