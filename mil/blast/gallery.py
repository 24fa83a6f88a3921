"""The audit's pictures: each sampled cell and its slide neighbours, contact sheets, a page.

Nothing written here shows the filter's call or probability: the audit is blinded.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mil.blast.folder import CELLS

if TYPE_CHECKING:
    from mil.blast.audit import SampledCell

CELL_PX, NEIGHBOUR_PX = 384, 128  # largest side of the saved cell and neighbour images


def _thumb(path: Path | None, size: int, pad: bool = True) -> tuple[Any, bool]:
    """(RGB thumbnail, found): at most ``size`` px, padded to a square unless ``pad`` is False;
    a missing or unreadable image gives a marked placeholder."""
    from PIL import Image, ImageDraw

    if path is not None:
        try:
            with Image.open(path) as src:
                im = src.convert("RGB")
                im.thumbnail((size, size))
                if not pad:
                    return im, True
                tile = Image.new("RGB", (size, size), "white")
                tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
                return tile, True
        except (OSError, ValueError):
            pass
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    d = ImageDraw.Draw(tile)
    d.line([(0, 0), (size, size)], fill=(200, 0, 0), width=3)
    d.line([(0, size), (size, 0)], fill=(200, 0, 0), width=3)
    d.text((4, size // 2 - 6), "MISSING", fill=(120, 0, 0))
    return tile, False


def _resolve(path: str, root: Path | None) -> Path | None:
    """A cell path from the store made absolute against ``root`` (None: not resolvable)."""
    if root is not None:
        return root / path
    return Path(path) if Path(path).is_absolute() else None


def write_gallery(out: Path, cells: list[SampledCell], root: Path | None, *,
                  neighbours: dict[int, list[str]] | None = None, thumb: int = 96,
                  cols: int = 8, rows: int = 6) -> dict[str, int]:
    """Cell images (``cells/00001.png``, up to CELL_PX), their slide neighbours
    (``cells/00001_n1.png`` ...), PNG contact sheets and an offline ``index.html`` in ``out``.

    Nothing written here shows the filter's call or probability (the audit is blinded)."""
    from PIL import Image, ImageDraw

    (out / CELLS).mkdir(parents=True, exist_ok=True)
    found = missing = 0
    tiles = []
    for c in cells:
        big, ok = _thumb(_resolve(c.path, root), CELL_PX, pad=False)
        found, missing = found + ok, missing + (not ok)
        big.save(out / CELLS / f"{c.row:05d}.png")
        tile = Image.new("RGB", (thumb, thumb), "white")
        small = big.copy()
        small.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        tile.paste(small, ((thumb - small.width) // 2, (thumb - small.height) // 2))
        tiles.append(tile)
        for k, path in enumerate((neighbours or {}).get(c.row, []), start=1):
            _thumb(_resolve(path, root), NEIGHBOUR_PX, pad=False)[0].save(
                out / CELLS / f"{c.row:05d}_n{k}.png")
    cap, per = 14, cols * rows
    sheets = 0
    for start in range(0, len(cells), per):
        chunk = cells[start : start + per]
        sheet = Image.new("RGB", (cols * thumb, math.ceil(len(chunk) / cols) * (thumb + cap)),
                          "white")
        draw = ImageDraw.Draw(sheet)
        for i, c in enumerate(chunk):
            x, y = (i % cols) * thumb, (i // cols) * (thumb + cap)
            sheet.paste(tiles[start + i], (x, y))
            draw.text((x + 2, y + thumb + 1), f"#{c.row}", fill=(0, 0, 0))
        sheets += 1
        sheet.save(out / f"sheet_{sheets:03d}.png")
    (out / "index.html").write_text(gallery_html(cells), encoding="utf-8")
    return {"found": found, "missing": missing, "sheets": sheets}


def gallery_html(cells: list[SampledCell]) -> str:
    """A self-contained, blinded page (no scripts, fonts or remote files, no filter calls);
    every data string escaped."""
    e = html.escape
    items = "\n".join(
        f'<figure><img src="cells/{c.row:05d}.png" alt="row {c.row}">'
        f"<figcaption><b>#{c.row}</b><br>{e(c.slide_id)} / {e(c.cell_id)}</figcaption></figure>"
        for c in cells)
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>blast filter audit"
            "</title>\n<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;"
            "width:120px;font-size:11px;vertical-align:top}img{width:112px;height:112px}"
            "</style></head><body>\n<h1>Blast filter audit</h1><p>Review the cells in the "
            "browser with <code>python -m mil.review AUDIT_DIR --rater NAME</code>, or fill the "
            "<code>expert</code> column of review.csv (blast / non-blast / unsure / unusable) "
            "for each row number shown here.</p>\n" + items + "\n</body></html>\n")
