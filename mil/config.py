"""Typed configs: dataclass defaults <- YAML file <- command-line flags; resolved config saved.

A CLI declares its options once, as a dataclass whose fields carry ``help`` metadata:

    @dataclass
    class FitConfig:
        epochs: int = field(default=100, metadata={"help": "training epochs"})

``add_config_arguments(parser, FitConfig)`` turns every field into ``--epochs`` style flags
(defaults suppressed so that only flags the user typed override the YAML), and
``resolve_config(FitConfig, args)`` merges defaults, ``--config FILE.yaml`` and the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mil.errors import CliError

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for ``X | None`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _converter(tp: Any) -> Any:
    """A str -> value function for argparse, for the field types configs use."""
    inner, _ = _base_type(tp)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        return lambda s: [item(x) for x in s.split(",") if x != ""]
    if typing.get_origin(inner) is typing.Literal:
        return str
    return inner


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per dataclass field (``foo_bar`` -> ``--foo-bar``), default suppressed."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("flag", True):
            continue
        tp = hints[f.name]
        inner, _ = _base_type(tp)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if inner is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(inner) is typing.Literal:
            kwargs["choices"] = [str(c) for c in typing.get_args(inner)]
        parser.add_argument(flag, type=_converter(tp), metavar=f.metadata.get("metavar"), **kwargs)


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Check/convert a YAML value to the field's type; a mismatch is a one-line CliError."""
    tp = typing.get_type_hints(cls)[name]
    inner, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise CliError(f"config value '{name}' may not be empty")
    try:
        if typing.get_origin(inner) is list:
            (item,) = typing.get_args(inner)
            seq = value.split(",") if isinstance(value, str) else list(value)
            return [item(x) for x in seq]
        if typing.get_origin(inner) is typing.Literal:
            allowed = typing.get_args(inner)
            conv = type(allowed[0])(value)
            if conv not in allowed:
                raise ValueError(f"not one of {list(allowed)}")
            return conv
        if inner is bool and not isinstance(value, bool):
            raise ValueError("expected true or false")
        return inner(value) if inner in (int, float, str) else value
    except (TypeError, ValueError) as err:
        raise CliError(f"config value '{name}': {value!r} is invalid ({err})") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a one-line CliError."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise CliError(f"config file {p} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CliError(f"config file {p} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(cls: type[T], args: argparse.Namespace | None = None, **extra: Any) -> T:
    """Defaults <- ``args.config`` YAML <- flags the user gave <- ``extra`` keywords."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    given = vars(args) if args is not None else {}
    if given.get("config"):
        data = load_yaml(given["config"])
        unknown = sorted(set(data) - names)
        if unknown:
            raise CliError(f"config file {given['config']}: unknown option(s) {', '.join(unknown)}")
        values.update({k: _coerce(cls, k, v) for k, v in data.items()})
    values.update({k: v for k, v in given.items() if k in names})
    values.update({k: v for k, v in extra.items() if k in names})
    cfg = cls(**values)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


def config_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (paths become strings)."""
    out = {}
    for k, v in dataclasses.asdict(cfg).items():
        out[k] = str(v) if isinstance(v, Path) else v
    return out


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config next to an output, as YAML loadable by ``--config``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False), encoding="utf-8")
    return p
