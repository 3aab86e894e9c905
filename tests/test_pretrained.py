"""Released weights: timm's ``pretrained=True`` reads official AbSViT files (offline, with local files)."""
import argparse

import pytest
import timm
import torch

from absvit.errors import CheckpointError

RELEASE = "https://berkeley.box.com/shared/static/"
RELEASED = {  # SPEC "Checkpoints": the official release's download locations
    "absvit_tiny_patch16_224.in1k": "0n2tvn9hmx7bwv097nwb60vw1jf4841n",
    "absvit_small_patch16_224.in1k": "3wpkf5qo31ghb4dzehczup4pfh24xmve",
    "absvit_base_patch16_224.in1k": "aain2svhs9lfvz8o21xao91dsnylgsot",
    "absvit_tiny_patch8_224_gap.in1k": "7415yz4d1l5z0ur6x32k35f8y99zgynq",
    "vit_tiny_patch8_224_gap.in1k": "zzy0bl6b59q05a3hobbehqeuhg5u1mhk",
}


def _official_file(path, name, *, ddp=False):
    """An official-layout training checkpoint; returns its ``model`` weights."""
    model = timm.create_model(name).state_dict()
    ema = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.items()}
    prefix = "module." if ddp else ""
    torch.save({"model": {prefix + k: v for k, v in model.items()}, "model_ema": ema,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}, "lr_scheduler": {"last_epoch": 299},
                "epoch": 299, "scaler": {"scale": 65536.0},
                "args": argparse.Namespace(model=name, input_size=224, lr=5e-4, model_ema=True)}, path)
    return model


def _assert_weights(model, expected):
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_released_weights_are_registered_with_the_official_urls():
    assert sorted(timm.list_pretrained("absvit_*")) == sorted(k for k in RELEASED if k.startswith("absvit_"))
    assert timm.list_pretrained("vit_tiny_patch8_224_gap*") == ["vit_tiny_patch8_224_gap.in1k"]
    for tagged, file_id in RELEASED.items():
        cfg = timm.get_pretrained_cfg(tagged)
        assert cfg.url == f"{RELEASE}{file_id}.pth" and cfg.num_classes == 1000 and cfg.crop_pct == 0.875
    assert timm.create_model("absvit_tiny_patch16_224").pretrained_cfg["tag"] == "in1k"
    assert timm.get_pretrained_cfg("absvit_tiny_patch16_224").notes == ("published: ImageNet top-1 74.1, ImageNet-C mCE 66.7",)
    assert not timm.list_pretrained("absvit_pico*")  # the embedded sizes have no release


def test_official_file_loads_its_model_entry_not_the_ema(tmp_path):
    path = tmp_path / "absvit_tiny.pth"
    expected = _official_file(path, "absvit_tiny_patch16_224")
    model = timm.create_model("absvit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_weights(model, expected)


def test_ddp_prefix_is_stripped(tmp_path):
    path = tmp_path / "pico.pth"
    expected = _official_file(path, "absvit_pico_patch8_64", ddp=True)
    _assert_weights(timm.create_model("absvit_pico_patch8_64", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))), expected)


def test_url_source_reads_files_with_their_training_args(tmp_path, monkeypatch):
    """timm downloads a url into the torch hub cache and loads it weights_only: the Namespace must pass."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = tmp_path / "pico.pth"
    expected = _official_file(path, "absvit_pico_patch8_64")
    model = timm.create_model("absvit_pico_patch8_64", pretrained=True, pretrained_cfg_overlay=dict(url=path.as_uri()))
    _assert_weights(model, expected)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / "pico.pth").is_file()


def test_a_new_head_keeps_the_released_backbone(tmp_path):
    path = tmp_path / "pico.pth"
    expected = _official_file(path, "absvit_pico_patch8_64")
    model = timm.create_model("absvit_pico_patch8_64", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.head.weight.shape == (3, 96)
    assert torch.equal(model.prompt, expected["prompt"]) and torch.equal(model.decoders[3].linear2.weight,
                                                                         expected["decoders.3.linear2.weight"])


@pytest.mark.parametrize("name", ["absvit_nano_patch8_64", "vit_pico_patch8_64"])
def test_a_file_for_another_model_is_refused_naming_it(tmp_path, name):
    path = tmp_path / "pico.pth"
    _official_file(path, "absvit_pico_patch8_64")
    with pytest.raises(CheckpointError, match=f"{path}: does not fit .*absvit_pico_patch8_64"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_vit_tiny_patch8_gap_has_the_released_architecture(tmp_path):
    model = timm.create_model("vit_tiny_patch8_224_gap")
    assert type(model) is timm.models.VisionTransformer
    # patch embed 37,056 + cls 192 + pos 785x192 + 12 blocks x 444,864 + fc_norm 384 + head 193,000
    assert sum(p.numel() for p in model.parameters()) == 5_719_720
    assert model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) and model.fc_norm.eps == 1e-6
    assert model.patch_embed.proj.kernel_size == (8, 8) and model.pos_embed.shape == (1, 785, 192)
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 3
    assert model.blocks[0].attn.qkv.bias is not None and model.blocks[0].mlp.fc1.out_features == 768
    path = tmp_path / "vit_tiny_gap.pth"
    expected = _official_file(path, "vit_tiny_patch8_224_gap")
    _assert_weights(timm.create_model("vit_tiny_patch8_224_gap", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))),
                    expected)


def test_timm_named_vit_release_files_load_with_load_checkpoint(tmp_path):
    """The official ViT-Ti/S/B files are for timm's own vit_*_patch16_224 (README's table)."""
    import absvit

    path = tmp_path / "vit_tiny.pth"
    expected = _official_file(path, "vit_tiny_patch16_224", ddp=True)
    _assert_weights(absvit.load_checkpoint(timm.create_model("vit_tiny_patch16_224"), path), expected)
