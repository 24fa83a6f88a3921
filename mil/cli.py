"""Helpers shared by every ``python -m mil.<stage>`` entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from mil.types import CliError

log = logging.getLogger("mil")


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (or DEBUG) lines to stderr in a short format."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )


def split_ids(text: str | None) -> list[str] | None:
    """``--slides A,B`` -> ['A', 'B']; empty or absent -> None (meaning: every slide)."""
    ids = [s for s in (text or "").split(",") if s]
    return ids or None


def run_cli(body: Callable[[], int], prog: str) -> int:
    """Run a CLI body; a :class:`CliError` (a user mistake) becomes one line and exit code 2."""
    try:
        return body()
    except CliError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; completed work is kept, re-run to resume", file=sys.stderr)
        return 130
