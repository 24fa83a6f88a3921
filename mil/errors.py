"""The one exception every stage raises for a user mistake."""

from __future__ import annotations


class CliError(Exception):
    """A user mistake (bad file, bad value): printed as one line, exit code 2, no traceback."""
