"""Slide ids -> safe store keys and output file names (any id: ``/``, ``..``, unicode, long)."""

from __future__ import annotations

import hashlib
import string

from mil.errors import CliError
from mil.store.bag import SlideId

_SAFE = set(string.ascii_lowercase + string.digits + "_-")
_MAX_KEY = 180


def encode_key(slide_id: SlideId) -> str:
    """A file-system and HDF5 safe, case-insensitive-safe key for any slide id.

    Bytes outside ``[a-z0-9_-]`` become ``%XX``; a key longer than 180 characters is cut and
    suffixed with a hash (the original id is kept in the slide's attributes).
    """
    if not slide_id:
        raise CliError("slide id may not be empty")
    key = "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in slide_id.encode("utf-8"))
    if len(key) > _MAX_KEY:
        digest = hashlib.sha256(slide_id.encode("utf-8")).hexdigest()[:16]
        cut = key[: _MAX_KEY - 17]
        if "%" in cut[-2:]:  # do not split an escape
            cut = cut[: cut.rindex("%")]
        key = cut + "~" + digest
    return key


def file_name(slide_id: SlideId) -> str:
    """A readable, traversal-proof file name for a slide's outputs (reports, attention CSVs).

    Ids made only of ``[A-Za-z0-9._-]`` (not starting with a dot) are kept as they are; any other
    id keeps its safe characters and gains ``-<hash>``, so ``../../x`` becomes ``_.._x-<hash>``.
    """
    if not slide_id:
        raise CliError("slide id may not be empty")
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in slide_id)
    if safe == slide_id and not slide_id.startswith(".") and len(slide_id) <= 120:
        return slide_id
    digest = hashlib.sha256(slide_id.encode("utf-8")).hexdigest()[:10]
    return f"{safe.lstrip('.')[:100] or 'slide'}-{digest}"


def decode_key(key: str) -> SlideId | None:
    """The slide id of a key, or None for a hashed (long) key, whose id lives in its attributes."""
    if "~" in key:
        return None
    out = bytearray()
    i = 0
    while i < len(key):
        if key[i] == "%":
            out.append(int(key[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(key[i]))
            i += 1
    return out.decode("utf-8")
