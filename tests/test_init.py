"""The embedded default's initialisation (absvit.models.init): mimetic attention and MAE's fixed sin-cos position
table, as products of the built model's weights against their targets, and a run so built that saves, loads and
resumes exactly."""
import json

import pytest
import timm
import torch

from absvit.checkpoint import read_checkpoint
from absvit.evaluate import load_model
from absvit.models.init import mimetic_init_, mimetic_targets, sincos_pos_embed_
from absvit.pretrain import pretrain
from tests.helpers import tiny_recipe


@pytest.mark.parametrize("name", ["absvit_pico_patch8_64_gap", "vit_pico_patch8_64_gap"])
def test_mimetic_products_are_their_targets(name):
    """Per block and head, W_q W_k^T (their convention q = x W_q) is the best rank-(head width) approximation of
    0.7 Z1 + 0.7 I; per block W_v W_proj = 0.4 Z2 - 0.4 I exactly; the biases are zero."""
    model = mimetic_init_(timm.create_model(name), torch.Generator().manual_seed(3))
    targets = torch.Generator().manual_seed(3)
    for block in model.blocks:
        attn = block.attn
        d, width = attn.qkv.in_features, attn.head_dim
        qk, vo = mimetic_targets(d, attn.num_heads, targets)
        for h in range(attn.num_heads):
            w_q = attn.qkv.weight[h * width:(h + 1) * width].T  # (d, width): q = x W_q
            w_k = attn.qkv.weight[d + h * width:d + (h + 1) * width].T
            u, s, vh = torch.linalg.svd(qk[h])
            best = u[:, :width] @ torch.diag(s[:width]) @ vh[:width]
            torch.testing.assert_close(w_q @ w_k.T, best, rtol=1e-4, atol=1e-5)
        w_v, w_proj = attn.qkv.weight[2 * d:].T, attn.proj.weight.T
        torch.testing.assert_close(w_v @ w_proj, vo, rtol=1e-4, atol=1e-5)
        assert not attn.qkv.bias.any() and not attn.proj.bias.any()
    # the targets themselves: identity-dominated, Z of variance 1/d
    qk, vo = mimetic_targets(96, 3, torch.Generator().manual_seed(0))
    assert torch.diagonal(qk, dim1=-2, dim2=-1).mean() == pytest.approx(0.7, abs=0.03)
    assert (vo + 0.4 * torch.eye(96)).std() == pytest.approx(0.4 / 96 ** 0.5, rel=0.05)


def test_sincos_table_is_fixed_and_local():
    model = sincos_pos_embed_(timm.create_model("absvit_pico_patch8_64_gap"))
    table = model.pos_embed[0]
    assert not model.pos_embed.requires_grad and not table[0].any()  # frozen; zero for the class token
    sim = torch.nn.functional.normalize(table[1:], dim=-1) @ torch.nn.functional.normalize(table[1:], dim=-1).T
    assert sim[0, 1] > sim[0, 7] > sim[0, 63]  # neighbours on the 8x8 grid are the most alike


def test_a_model_so_built_saves_loads_and_resumes_exactly(tmp_path, embedded):
    recipe = tiny_recipe(epochs=2, init="mimetic", pos_embed="sincos", sched_on_steps=True)
    whole = pretrain("absvit_pico_patch8_64_gap", embedded, tmp_path / "whole", recipe, track=False)
    pretrain("absvit_pico_patch8_64_gap", embedded, tmp_path / "cut", recipe, track=False, stop_after_epoch=1)
    resumed = pretrain("absvit_pico_patch8_64_gap", embedded, tmp_path / "cut", recipe, track=False)
    assert {k: v for k, v in resumed.items() if k != "epoch_seconds"} == \
           {k: v for k, v in whole.items() if k != "epoch_seconds"}
    a, b = (read_checkpoint(tmp_path / d / "model.pth") for d in ("whole", "cut"))
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    table = sincos_pos_embed_(timm.create_model("absvit_pico_patch8_64_gap")).pos_embed
    torch.testing.assert_close(a["model"]["pos_embed"], table, rtol=0, atol=0)  # not trained
    model, *_ = load_model(tmp_path / "whole" / "model.pth")  # loads as any run does
    assert json.dumps(a["run"]["recipe"]["init"]) == '"mimetic"'
    torch.testing.assert_close(model.pos_embed, table, rtol=0, atol=0)
