"""Where a command writes: checked before the work starts, not after it.

A read-only output folder (or store) must fail in the first second with one line, not with a
traceback after an hour of extraction or training. :func:`require_writable` finds the folder
that will receive the output (the nearest existing one) and creates and deletes a probe file in
it: a real write, so it also catches read-only mounts and files owned by someone else.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mil.errors import CliError


def _existing(path: Path) -> Path:
    """``path`` itself, or the nearest parent that exists."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def require_writable(path: str | Path, what: str = "output") -> None:
    """A CliError unless ``path`` (a file or folder, existing or not) can be written."""
    target = Path(path)
    base = _existing(target)
    if base.is_file():
        if base != target.absolute():
            raise CliError(f"cannot write {what} {target}: {base} is a file, not a folder")
        folder = base.parent
        if not os.access(base, os.W_OK):
            raise CliError(f"cannot write {what} {target}: the file is read-only")
    else:
        folder = base
    try:
        fd, probe = tempfile.mkstemp(prefix=".cellmil-write-probe-", dir=folder)
    except OSError as err:
        raise CliError(f"cannot write {what} {target}: folder {folder} is not writable "
                       f"({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
