import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mil.config import add_config_arguments, load_yaml, resolve_config, save_config
from mil.errors import CliError


@dataclass
class Cfg:
    epochs: int = field(default=10, metadata={"help": "epochs"})
    lr: float = 1e-3
    loss: Literal["ce", "gce"] = "ce"
    classes: list[str] | None = None
    stream: bool = False


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_config_arguments(p, Cfg)
    return p.parse_args(argv)


def test_defaults_yaml_flags_precedence(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 5\nlr: 0.1\nclasses: [A, B]\n")
    cfg = resolve_config(Cfg, _parse(["--config", str(y), "--epochs", "7", "--stream"]))
    assert cfg == Cfg(epochs=7, lr=0.1, loss="ce", classes=["A", "B"], stream=True)
    assert resolve_config(Cfg, _parse(["--classes", "x,y"])).classes == ["x", "y"]
    assert resolve_config(Cfg, _parse([])) == Cfg()


def test_saved_config_reloads(tmp_path: Path) -> None:
    cfg = Cfg(epochs=3, loss="gce", classes=["a"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert resolve_config(Cfg, _parse(["--config", str(path)])) == cfg


@pytest.mark.parametrize(("text", "message"), [
    ("epochz: 3\n", "unknown option"),
    ("loss: focal\n", "'loss'"),
    ("epochs: many\n", "'epochs'"),
    ("- a\n", "mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_yaml(tmp_path: Path, text: str, message: str) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(CliError, match=message):
        resolve_config(Cfg, _parse(["--config", str(y)]))


def test_missing_yaml(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")
