"""Decoding cell images for extraction: any Pillow mode to RGB, resized, as uint8 tensors.

The decode runs in DataLoader workers. A file that cannot be read is not an exception: the
worker returns ``ok=False`` and a blank image, and the extractor records the path as failed.
Images are returned as ``uint8 (3, S, S)``; conversion to float and normalisation happen on the
whole batch in the main process (4x less data between processes, one vectorised op).

Resize matches timm's eval transform with ``crop_pct=1.0``: the shorter side is resized to
``S`` with the backbone's interpolation and the centre ``S x S`` is kept (cell crops are
centred, so the whole crop is used). JPEGs are decoded with ``Image.draft`` at the smallest
DCT scale that still gives at least ``S`` pixels (only helps when the image is >= 2x ``S``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1, "box": 4, "hamming": 5}
BACKGROUND = (255, 255, 255)  # transparent pixels become white, like the slide background


def to_rgb(im: Any) -> Any:
    """Any Pillow image -> 8-bit RGB.

    16-bit greyscale ('I;16*', 'I') is scaled from the full 16-bit range; float ('F') is taken
    as 0..1; alpha (RGBA, LA, P with transparency) is composited onto a white background.
    """
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if mode == "F" else arr / 257.0  # 0..1 or 0..65535 -> 0..255
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """(S, S, 3) uint8 RGB of one image file; raises on unreadable files."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, TIFF tag noise
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))
            im.load()
            rgb = to_rgb(im)
    w, h = rgb.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        rgb = rgb.resize((nw, nh), RESAMPLE.get(interpolation, 3))
    if (nw, nh) != (size, size):
        left, top = (nw - size) // 2, (nh - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.array(rgb, dtype=np.uint8)  # a writable copy


@dataclass
class CellImages:
    """A flat, ordered dataset of image files -> ``(index, uint8 (3, S, S), ok)``."""

    paths: list[str]
    size: int
    interpolation: str = "bicubic"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, bool]:
        import torch

        try:
            arr = load_image(self.paths[i], self.size, self.interpolation)
            ok = True
        except Exception:  # noqa: BLE001 - corrupt, truncated, empty, not an image: all skipped
            arr = np.zeros((self.size, self.size, 3), np.uint8)
            ok = False
        return i, torch.from_numpy(arr).permute(2, 0, 1), ok  # (3, S, S) uint8


def make_loader(ds: CellImages, batch_size: int, workers: int, pin_memory: bool) -> Any:
    """Ordered DataLoader; workers decode, the main process runs the model."""
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)


def normalise(x: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """uint8 (B, 3, S, S) -> float32 normalised, channels_last, on ``x``'s device."""
    import torch

    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255.0
    x = x.contiguous(memory_format=torch.channels_last).float()
    return x.sub_(m).div_(s)
