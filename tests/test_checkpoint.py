import argparse
import os
import subprocess
import sys

import pytest
import timm
import torch

from absvit.checkpoint import CheckpointError, save_checkpoint
from absvit.models.weights import load_checkpoint


def official_keys(depth: int) -> set[str]:
    """The state-dict names of an official AbSViT checkpoint, spelled out from SPEC.md."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias", "head.weight", "head.bias", "prompt"}
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
        keys |= {f"decoders.{i}.linear.weight", f"decoders.{i}.linear2.weight"}
    return keys


def official_file(tmp_path, model, **overrides):
    """A file laid out like the released ones: model, EMA, optimizer, scheduler, args..."""
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {
        "model": model.state_dict(), "model_ema": ema,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "lr_scheduler": {"base_lrs": [5e-4], "last_epoch": 299}, "epoch": 299,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": argparse.Namespace(model="absvit_small_patch16_224", lr=5e-4, batch_size=256, data_path="/data"),
    }
    ckpt.update(overrides)
    path = tmp_path / "absvit_official.pth"
    torch.save(ckpt, path)
    return path


def test_official_key_names():
    assert set(timm.create_model("absvit_small_patch16_224").state_dict()) == official_keys(12)


def test_official_file_loads_strictly(tmp_path):
    src = timm.create_model("absvit_pico_patch8_64")
    path = official_file(tmp_path, src)
    dst = load_checkpoint(timm.create_model("absvit_pico_patch8_64"), path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    ema = load_checkpoint(timm.create_model("absvit_pico_patch8_64"), path, ema=True)
    assert torch.equal(ema.prompt, src.prompt + 1.0)


def test_save_load_round_trip_is_exact(tmp_path):
    src = timm.create_model("absvit_nano_patch8_64").eval()
    save_checkpoint(tmp_path / "ckpt.pth", src, epoch=3)
    dst = timm.create_model("absvit_nano_patch8_64").eval()
    dst.load_checkpoint(tmp_path / "ckpt.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_plain_and_ddp_state_dicts_load(tmp_path):
    src = timm.create_model("vit_pico_patch8_64")
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pth")
    for name in ("plain.pth", "ddp.pth"):
        dst = load_checkpoint(timm.create_model("vit_pico_patch8_64"), tmp_path / name)
        assert torch.equal(dst.pos_embed, src.pos_embed)


def test_wrong_key_is_named(tmp_path):
    src = timm.create_model("absvit_pico_patch8_64")
    state = src.state_dict()
    state["decoders.0.linear_typo.weight"] = state.pop("decoders.0.linear.weight")
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(timm.create_model("absvit_pico_patch8_64"), path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys ['decoders.0.linear.weight']" in msg
    assert "unexpected keys ['decoders.0.linear_typo.weight']" in msg


def test_vit_checkpoint_into_absvit_names_the_missing_feedback(tmp_path):
    torch.save({"model": timm.create_model("vit_pico_patch8_64").state_dict()}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"9 missing keys \['decoders.0.linear.weight'.*\] \.\.\. \+4 more") as err:
        load_checkpoint(timm.create_model("absvit_pico_patch8_64"), tmp_path / "vit.pth")
    assert str(err.value).endswith("the file fits vit_pico_patch8_64")


def test_shape_mismatch_is_named(tmp_path):
    torch.save({"model": timm.create_model("absvit_pico_patch8_64", num_classes=7).state_dict()}, tmp_path / "c7.pth")
    with pytest.raises(CheckpointError, match=r"head.weight: file \(7, 96\) vs model \(10, 96\)"):
        load_checkpoint(timm.create_model("absvit_pico_patch8_64"), tmp_path / "c7.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_callable_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    src = timm.create_model("absvit_pico_patch8_64")
    path = official_file(tmp_path, src, args=_Exploit(marker))
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(timm.create_model("absvit_pico_patch8_64"), path)
    assert not marker.exists()


@pytest.mark.parametrize("content,match", [
    (b"not a checkpoint", r"not a torch checkpoint \(corrupt, or not written by torch.save: it starts with b'not a ch"),
    (b"e\n", r"not a torch checkpoint .*it starts with b'e\\n'\)$"),  # once a KeyError out of the unpickler
    (b"", r"an empty file \(0 bytes\); expected a torch.save checkpoint$"),
    (None, "no such checkpoint file"),
])
def test_malformed_files(tmp_path, content, match):
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(timm.create_model("absvit_pico_patch8_64"), path)


def test_missing_ema_and_non_dict(tmp_path):
    src = timm.create_model("absvit_pico_patch8_64")
    torch.save({"model": src.state_dict(), "epoch": 1}, tmp_path / "no_ema.pth")
    with pytest.raises(CheckpointError, match=r"no 'model_ema' entry; the file has \['epoch', 'model'\]"):
        load_checkpoint(timm.create_model("absvit_pico_patch8_64"), tmp_path / "no_ema.pth", ema=True)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(src, tmp_path / "list.pth")


def test_file_io_knows_no_model():
    """absvit.checkpoint reads and writes files; fitting them to models is absvit.models.weights' (no import circle)."""
    code = "import sys, absvit.checkpoint; assert not [m for m in sys.modules if m.startswith(('absvit.models', 'timm'))]"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
