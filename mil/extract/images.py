"""Decoding cell images for extraction: any image file to RGB, resized, as uint8 tensors.

On the CPU the main process decodes each batch on its threads between forward passes
(decoding in worker processes would take cores from the model's threads mid-pass); with a GPU,
DataLoader worker processes decode in the background. A file that cannot be read is not an
exception: ``ok=False`` and a blank image come back, and the extractor records the path as
failed. Batches are ``uint8 (B, 3, S, S)`` channels_last views; conversion to float and
normalisation happen on the whole batch in the main process (4x less data between processes).

Decoding: JPEGs go to TorchCodec's libjpeg-turbo decoder (pixel-identical to Pillow's, without
the GIL, so threads scale); everything else (TIFF, PNG, 16-bit, alpha, ...) goes to Pillow
(:func:`to_rgb`), and so do JPEGs with an EXIF rotation (TorchCodec applies it, Pillow and
timm do not). Without TorchCodec, Pillow decodes JPEGs too, with the same pixels.

Resize follows timm's eval transform with ``crop_pct=1.0``: the shorter side is resized to
``S`` with the backbone's interpolation and the centre ``S x S`` is kept (cell crops are
centred, so the whole crop is used). Bicubic and bilinear run on torch's antialiased uint8
kernels, which implement Pillow's filters (every pixel within one grey level of
``PIL.Image.resize``), once per batch for all images of one size: 400 -> 224 px bicubic costs
0.5 ms per image on two threads here, against 4.5 ms for Pillow on one.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mil.extract.stain import StainNormaliser

TORCH_RESIZE = ("bicubic", "bilinear")  # antialiased uint8 kernels in torch
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


@functools.cache
def _jpeg_decoder() -> Any:
    """TorchCodec's ``decode_jpeg`` (looked up once per process), or None where TorchCodec is
    missing or cannot load."""
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception:  # noqa: BLE001 - not installed, or built for another torch: use Pillow
        return None
    return decode_jpeg


JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_CHUNK = 16  # images held decoded at full size before their batched resize (bounds RAM)


def _exif_rotated(data: bytes) -> bool:
    """A JPEG whose EXIF orientation is not 'normal': TorchCodec would rotate it, Pillow (and
    timm's transform) do not, so such files go to Pillow."""
    if data.find(b"Exif\x00\x00", 0, 65536) < 0:  # the APP1 segment comes first, if at all
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.getexif().get(0x0112, 1) != 1
    except Exception:  # noqa: BLE001 - unreadable header: let Pillow report it
        return True


def decode(path: str | Path) -> Any:
    """One image file -> ``uint8 (H, W, 3)`` RGB tensor; raises on unreadable files."""
    import torch
    from PIL import Image

    data = Path(path).read_bytes()
    jpeg = _jpeg_decoder() if data.startswith(JPEG_MAGIC) and not _exif_rotated(data) else None
    if jpeg is not None:
        try:
            return jpeg(data, mode="RGB").permute(1, 2, 0)  # (H, W, 3) view
        except RuntimeError:
            pass  # e.g. a 12-bit or arithmetic-coded JPEG: Pillow decides
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, TIFF tag noise
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return torch.from_numpy(np.array(to_rgb(im), dtype=np.uint8))  # (H, W, 3)


def resize_batch(images: list[Any], size: int, interpolation: str = "bicubic") -> Any:
    """``uint8 (H, W, 3)`` tensors -> ``uint8 (B, S, S, 3)``: shorter side to ``S``, centre crop.

    Images of one size are resized in one call (bicubic, bilinear: torch's antialiased
    kernels, Pillow's filters); other filters go through Pillow image by image.
    """
    import torch

    out = torch.empty(len(images), size, size, 3, dtype=torch.uint8)  # (B, S, S, 3)
    groups: dict[tuple[int, int], list[int]] = {}
    for j, im in enumerate(images):
        groups.setdefault((im.shape[0], im.shape[1]), []).append(j)
    for (h, w), idx in groups.items():
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        x = torch.stack([images[j] for j in idx])  # (n, h, w, 3)
        if (nw, nh) != (w, h):
            if interpolation in TORCH_RESIZE:
                x = torch.nn.functional.interpolate(
                    x.permute(0, 3, 1, 2), size=(nh, nw), mode=interpolation,
                    antialias=True).permute(0, 2, 3, 1)  # (n, nh, nw, 3)
            else:
                x = torch.stack([_pillow_resize(im, nw, nh, interpolation) for im in x])
        top, left = (nh - size) // 2, (nw - size) // 2
        out[idx] = x[:, top:top + size, left:left + size]
    return out


def _pillow_resize(im: Any, nw: int, nh: int, interpolation: str) -> Any:
    import torch
    from PIL import Image

    small = Image.fromarray(im.numpy()).resize((nw, nh), RESAMPLE.get(interpolation, 3))
    return torch.from_numpy(np.array(small, dtype=np.uint8))


def load_image(path: str | Path, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """(S, S, 3) uint8 RGB of one image file; raises on unreadable files."""
    return resize_batch([decode(path)], size, interpolation)[0].numpy()


@dataclass
class CellImages:
    """A flat, ordered dataset of image files -> ``(index, uint8 (S, S, 3), ok)``.

    ``__getitems__`` (a batch) decodes on ``threads`` threads, then resizes all images of one
    size in one call on the calling thread (torch's own threads): ``threads > 1`` is for
    decoding in the main process between forward passes. ``resize_each``: every decoding thread
    resizes its own image instead (for torch at one thread, while a compiled engine computes:
    torch's parallel resize next to another runtime's threads ran 6x slower than one thread).
    ``stain``: normalises each resized crop (the backbone's pixels: 3x fewer than a 400 px
    crop's, and the lookup costs 0.36 instead of 1.3 ms); a per-slide mode measures a slide's
    sample crops at full size before the slide's first batch and keeps them decoded until
    their own batch.
    """

    paths: list[str]
    size: int
    interpolation: str = "bicubic"
    threads: int = 1
    resize_each: bool = False
    stain: StainNormaliser | None = None
    _held: dict[int, Any] = field(default_factory=dict, repr=False)  # sample crops, decoded

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, bool]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any, bool]]:
        from concurrent.futures import ThreadPoolExecutor

        threads = min(self.threads, len(indices))
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        out: list[tuple[int, Any, bool]] = []
        try:
            chunk = len(indices) if self.resize_each else DECODE_CHUNK  # each is small already
            for start in range(0, len(indices), chunk):
                part = indices[start:start + chunk]
                run = pool.map if pool else map  # the decoders drop the GIL
                self._fit_stain(part, run)
                images = list(run(self._decoded, part))
                out += self._normalised(self._resized(part, images), run)
        finally:
            if pool:
                pool.shutdown()
        return out

    def _resized(self, indices: list[int], images: list[Any]) -> list[tuple[int, Any, bool]]:
        import torch

        good = [im for im in images if im is not None]
        resized = iter(resize_batch(good, self.size, self.interpolation) if good else [])
        blank = torch.zeros(self.size, self.size, 3, dtype=torch.uint8)
        return [(i, next(resized) if im is not None else blank, im is not None)
                for i, im in zip(indices, images, strict=True)]

    def _normalised(self, rows: list[tuple[int, Any, bool]], run: Any) -> list[tuple[int, Any, bool]]:
        """Resized rows, stain-normalised on the decoding threads."""
        if self.stain is None:
            return rows
        stain = self.stain
        return list(run(lambda r: (r[0], stain(r[0], r[1]), True) if r[2] else r, rows))

    def _fit_stain(self, indices: list[int], run: Any) -> None:
        """Measure the slides of ``indices`` that lack stain statistics on their sample crops,
        keeping those crops decoded for the main pass."""
        if self.stain is None:
            return
        for sid in self.stain.missing(indices):
            sample = self.stain.sample(sid)
            raw = list(run(self._read, sample))
            self._held.update(zip(sample, raw, strict=True))
            parts = list(run(self.stain.partial, [im.numpy() for im in raw if im is not None]))
            self.stain.fit_partials(sid, parts)

    def _read(self, i: int) -> Any:
        """Cell ``i`` decoded, ``uint8 (H, W, 3)``; None if unreadable or empty."""
        try:
            im = decode(self.paths[i])
        except Exception:  # noqa: BLE001 - corrupt, truncated, empty, not an image: all skipped
            return None
        return None if im.shape[0] == 0 or im.shape[1] == 0 else im

    def _decoded(self, i: int) -> Any:
        """Cell ``i`` decoded; with ``resize_each`` also resized."""
        im = self._held.pop(i) if i in self._held else self._read(i)
        if im is None or not self.resize_each:
            return im
        return resize_batch([im], self.size, self.interpolation)[0]


def collate_cells(batch: list[tuple[int, Any, bool]]) -> tuple[Any, Any, Any]:
    """-> index (B,) int64, x (B, 3, S, S) uint8 in channels_last memory, ok (B,) bool."""
    from torch.utils.data import default_collate

    index, x, ok = default_collate(batch)  # x (B, S, S, 3), in shared memory inside a worker
    return index, x.permute(0, 3, 1, 2), ok  # a view: no copy


def make_loader(ds: CellImages, batch_size: int, workers: int, pin_memory: bool) -> Any:
    """Ordered DataLoader: ``workers`` processes decode, or (0) the main process does."""
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_cells, pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)


def normalise(x: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """uint8 (B, 3, S, S) -> float32 ``(x / 255 - mean) / std``, channels_last, on x's device.

    One conversion and one fused multiply-add (``addcmul``) on the channels_last view the
    loader yields: 3x faster than transposing to channels_last and normalising in two passes.
    """
    import torch

    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last).float()  # (B, 3, S, S)
    return torch.addcmul(-m / s, x, 1.0 / (255.0 * s))
