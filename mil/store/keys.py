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


# Names Windows reserves for devices, with any extension (``CON``, ``nul.txt``, ``COM1``).
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                              *(f"LPT{i}" for i in range(1, 10))})


def _hashed(slide_id: SlideId, safe: str, n: int = 10) -> str:
    digest = hashlib.sha256(slide_id.encode("utf-8")).hexdigest()[:n]
    return f"{safe.lstrip('.')[:100] or 'slide'}-{digest}"


def file_name(slide_id: SlideId) -> str:
    """A readable, traversal-proof file name for a slide's outputs (reports, attention CSVs).

    Ids made only of ``[A-Za-z0-9._-]`` (not starting or ending with a dot, not a name Windows
    reserves such as ``CON`` or ``nul.txt``) are kept as they are; any other id keeps its safe
    characters and gains ``-<hash>``, so ``../../x`` becomes ``_.._x-<hash>``. Names of several
    slides that differ only in case: :func:`file_names`.
    """
    if not slide_id:
        raise CliError("slide id may not be empty")
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in slide_id)
    reserved = slide_id.split(".")[0].upper() in WINDOWS_RESERVED
    if (safe == slide_id and not slide_id.startswith(".") and not slide_id.endswith(".")
            and len(slide_id) <= 120 and not reserved):
        return slide_id
    return _hashed(slide_id, "_" + safe if reserved else safe)  # "_nul.txt-<hash>": not a device


def file_names(slide_ids: list[SlideId]) -> dict[SlideId, str]:
    """:func:`file_name` of each slide, distinct also on case-insensitive file systems.

    Slides whose names would differ only in case (``Case`` and ``case``) both gain ``-<hash>``,
    so none can overwrite another's output on macOS or Windows; the others keep their names.
    """
    names = {sid: file_name(sid) for sid in dict.fromkeys(slide_ids)}
    folded: dict[str, list[SlideId]] = {}
    for sid, name in names.items():
        folded.setdefault(name.lower(), []).append(sid)
    for group in folded.values():
        if len(group) > 1:
            for sid in group:
                if names[sid] == sid:  # hashed names already differ by their hash
                    names[sid] = _hashed(sid, sid)
    if len({n.lower() for n in names.values()}) < len(names):  # only a contrived id set
        names = {sid: _hashed(sid, name, 32) for sid, name in names.items()}
    return names


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
