"""One writer per zarr store: an exclusive lock file inside the store, held while it is open.

HDF5 locks its own file (one writer, or readers only); its lock error is reworded in
:mod:`mil.store.backends`. A zarr directory has no such lock, so two processes appending to one
store would both extract the same slides and race on their commits; the second writer is
refused instead, with a one-line error. Locks are ``flock`` locks: the kernel releases them when
the holder exits, even after ``kill -9``, so a stale lock file never blocks anyone. Within one
process, several writable handles of one store share the lock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from mil.errors import CliError

LOCK_NAME = ".cellmil-writer.lock"  # inside the zarr directory: zarr ignores it

_held: dict[Path, tuple[IO[str], int]] = {}  # store -> (open lock file, handles sharing it)


def acquire(store: Path) -> Path:
    """Take (or share, within this process) the writer lock of the zarr store ``store``."""
    key = store.resolve()
    if key in _held:
        fh, count = _held[key]
        _held[key] = (fh, count + 1)
        return key
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one writer is the user's responsibility
        return key
    key.mkdir(parents=True, exist_ok=True)
    fh = (key / LOCK_NAME).open("a+", encoding="utf-8")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise CliError(f"another process is writing {store} (pid {holder}); wait for it to "
                       "finish, or write to another store") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _held[key] = (fh, 1)
    return key


def release(key: Path) -> None:
    """Give back one handle's share of the lock; the last one closes the lock file."""
    if key not in _held:
        return
    fh, count = _held[key]
    if count > 1:
        _held[key] = (fh, count - 1)
        return
    del _held[key]
    fh.close()  # closing the file drops the flock
