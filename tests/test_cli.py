"""The one command runner: every stage gets --config and -v, YAML defaults, light --help."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mil.cli import STAGES, build_parser, main, stage_command
from mil.heatmap import main as heatmap_main


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_command_takes_config_and_verbose(stage: str) -> None:
    leaves = list(_leaves(build_parser(stage_command(stage), f"mil.{stage}")))
    assert leaves
    for path, parser in leaves:
        flags = {s for a in parser._actions for s in a.option_strings}
        assert {"--config", "-v", "--verbose"} <= flags, (stage, path)


def test_cellmil_lists_the_stages(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(f"  {name}" in err for name in STAGES)
    assert main(["--help"]) == 0


def test_cellmil_runs_a_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "info", str(tmp_path / "absent.h5")]) == 2
    assert "mil.store: error: bag store not found" in capsys.readouterr().err


def test_yaml_values_are_defaults_and_flags_win(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "heatmap.yaml"
    cfg.write_text("top_k: 0\n")
    base = [str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--config", str(cfg)]
    assert heatmap_main(base) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err  # the YAML value was used
    assert heatmap_main([*base, "--top-k", "5"]) == 2  # the flag wins: the run folder is next
    assert "is not a mil.fit run folder" in capsys.readouterr().err


def test_unknown_yaml_option_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "heatmap.yaml"
    cfg.write_text("top_kk: 3\n")
    assert heatmap_main([str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown option(s) top_kk" in err


def test_help_imports_no_torch() -> None:
    code = ("import sys; from mil.cli import STAGES, build_parser, stage_command; "
            "[build_parser(stage_command(n), n) for n in STAGES]; "
            "print(sorted(m for m in ('torch', 'timm', 'pytorch_lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_layers_contract() -> None:
    """The layer contract of pyproject.toml holds (CI also runs lint-imports)."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter not installed")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([exe, "--no-cache"], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:]
    assert "0 broken" in res.stdout
