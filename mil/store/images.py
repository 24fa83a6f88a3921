"""Where a store's cell images are: the root its relative ``paths`` start at."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mil.errors import CliError

log = logging.getLogger("mil")


def image_root(attrs: dict[str, Any], override: str | Path | None = None,
               store_path: str | Path = "the store") -> Path | None:
    """The folder the store's cell paths are relative to.

    ``override`` (a ``--source`` flag) wins and must be a folder; else what extraction recorded:
    ``source_root``, else the ``source`` of its config (a folder, or a manifest whose paths start
    at its folder). None (with a warning) when neither is known.
    """
    if override is not None:
        root = Path(override)
        if not root.is_dir():
            raise CliError(f"--source {root} is not a folder")
        return root
    cfg = attrs.get("config")
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            cfg = None
    cfg = cfg if isinstance(cfg, dict) else {}
    for value in (attrs.get("source_root"), attrs.get("source"), cfg.get("source")):
        if isinstance(value, str) and value:
            p = Path(value)
            return p.parent if p.suffix.lower() == ".csv" or p.is_file() else p
    log.warning("warning: %s records no source root and no --source was given; "
                "images are looked up relative to the working directory", store_path)
    return None
