"""Which NNCF settings keep int8 features closest to fp32 on the 1,150 Matek cells.

    python experiments/int8_features_matek/probe_nncf.py [VARIANT ...]   # ~1 min per variant

All cells decoded and resized as mil.extract does (no stain normalisation), fp32 features from
the OpenVINO model, then each variant quantised with NNCF (mixed preset, 300 calibration cells
drawn evenly) and its features' cosine to fp32: mean, 1st percentile, min; and its speed.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MATEK = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "matek_lmu"
VARIANTS: dict[str, dict] = {
    "mixed": {},
    "mixed_fullbias": {"fast_bias_correction": False},
    "ignore_stem": {"ignore": [0]},
    "ignore_head_fullbias": {"fast_bias_correction": False, "ignore": [-1]},
    "ignore_stem_fullbias": {"fast_bias_correction": False, "ignore": [0]},
    "ignore_stem_head_fullbias": {"fast_bias_correction": False, "ignore": [0, -1]},
    "ignore_last3_fullbias": {"fast_bias_correction": False, "ignore": [-3, -2, -1]},
}


def main(names: list[str]) -> None:
    import nncf
    import openvino as ov
    import torch

    from mil.extract.backbone import build_backbone
    from mil.extract.engine import compile_openvino, nhwc, openvino_model, sample_cells
    from mil.extract.images import CellImages

    bb = build_backbone("tf_efficientnet_lite0", "auto", 224)
    paths = sorted(str(p) for p in MATEK.rglob("*") if p.suffix.lower() in (".jpg", ".tif", ".tiff"))
    if not paths:
        sys.exit(f"no Matek cells under {MATEK}")
    rows = CellImages(paths, 224, bb.interpolation, threads=2).__getitems__(list(range(len(paths))))
    x = torch.stack([im for _, im, ok in rows if ok]).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    calib = sample_cells(paths, 300, 224, bb.interpolation)
    items = [nhwc(calib[i:i + 1]) for i in range(len(calib))]
    logging.getLogger("nncf").setLevel(logging.WARNING)
    tmp = Path(tempfile.mkdtemp())

    def features(model) -> tuple[np.ndarray, float]:
        ov.save_model(model, str(tmp / "m.xml"), compress_to_fp16=False)
        run = compile_openvino(tmp / "m.xml", "32", None)
        out = np.concatenate([run(x[i:i + 64]) for i in range(0, len(x), 64)])  # (N, D)
        t = time.perf_counter()
        for _ in range(3):
            run(x[:64])
        return out, 192 / (time.perf_counter() - t)

    ref, rate0 = features(openvino_model(bb))
    print(f"{len(x)} cells; fp32 {rate0:.1f} cells/s", flush=True)
    for name in names or list(VARIANTS):
        kw = dict(VARIANTS[name])
        model = openvino_model(bb)
        if "ignore" in kw:
            convs = [op.get_friendly_name() for op in model.get_ordered_ops()
                     if op.get_type_name() == "Convolution"]
            kw["ignored_scope"] = nncf.IgnoredScope(names=[convs[i] for i in kw.pop("ignore")])
        q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                          preset=nncf.QuantizationPreset.MIXED, **kw)
        a, rate = features(q)
        c = (a * ref).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"{name}: cosine mean {c.mean():.4f} p1 {np.percentile(c, 1):.4f} min {c.min():.4f}; "
              f"{rate:.1f} cells/s ({rate / rate0:.2f} x fp32)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
