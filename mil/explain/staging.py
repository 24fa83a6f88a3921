"""An export that is whole or absent: written into a hidden folder, published at the end.

``mil.heatmap`` writes every slide folder, ``summary.csv`` and ``index.html`` under
``OUT/.partial-XXXX/``; only when all of them are written does it move them into ``OUT`` (each a
rename on the same file system, the index last). An error or an interrupt on the way deletes
the partial folder, so ``OUT`` never holds half an export. Earlier exports' folders of the same
slides are replaced; other files in ``OUT`` are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mil.outputs import require_writable

LAST = "index.html"  # published last: a reader who sees it sees the whole export


def publish(stage: Path, out: Path) -> None:
    """Move every entry of ``stage`` into ``out`` (replacing entries of the same name)."""
    for entry in sorted(stage.iterdir(), key=lambda p: (p.name == LAST, p.name)):
        dest = out / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(entry, dest)
    stage.rmdir()


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield the hidden folder to write into; publish it on success, delete it on failure."""
    require_writable(out, "report folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    publish(stage, out)
