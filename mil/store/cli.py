"""``python -m mil.store info PATH | verify PATH | convert A B | import-h5dir DIR OUT``."""

from __future__ import annotations

import argparse

from mil.cli import Command, run_command


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--slides", action="store_true", help="one line per slide")


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--overwrite", action="store_true")


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="folder of <slide_id>.h5 files with 'features' and optional 'coords'")
    p.add_argument("dst")
    p.add_argument("--backbone", default="unknown", help="name of the encoder that made them")
    p.add_argument("--overwrite", action="store_true")


def _info(args: argparse.Namespace) -> None:
    from mil.store.info import info_text

    print(info_text(args.path, per_slide=args.slides))


def _verify(args: argparse.Namespace) -> int:
    from mil.store.verify import verify

    health = verify(args.path)
    print("\n".join(health.lines()))
    return 0 if health.ok else 1


def _convert(args: argparse.Namespace) -> None:
    from mil.store.convert import convert

    n = convert(args.src, args.dst, overwrite=args.overwrite)
    print(f"converted {n} slides: {args.src} -> {args.dst}")


def _import(args: argparse.Namespace) -> None:
    from mil.store.convert import import_h5dir

    n = import_h5dir(args.src, args.dst, backbone=args.backbone, overwrite=args.overwrite)
    print(f"imported {n} slides from {args.src} into {args.dst}")


COMMAND = Command(
    name="store", help="inspect and convert bag stores",
    subcommands=(
        Command("info", "slides, cells, feature dim, backbone, weights, failed cells",
                run=_info, arguments=_info_args),
        Command("verify", "read every slide: complete, readable, finite, consistent; "
                          "exit 1 naming each bad slide", run=_verify, arguments=_verify_args),
        Command("convert", "copy a store into the other backend, losslessly",
                run=_convert, arguments=_convert_args),
        Command("import-h5dir", "import CLAM/TRIDENT per-slide feature .h5 files",
                run=_import, arguments=_import_args),
    ),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv)
