import pytest
import timm
import torch

from absvit.models import AbSViT
from tests.reference import reference_forward

ABSVIT = ["absvit_tiny_patch16_224", "absvit_small_patch16_224", "absvit_base_patch16_224",
          "absvit_tiny_patch8_224_gap", "absvit_pico_patch8_64", "absvit_nano_patch8_64"]
EMBEDDED_VIT = ["vit_pico_patch8_64", "vit_nano_patch8_64"]


def _model(name="absvit_pico_patch8_64", **kw):
    return timm.create_model(name, **kw).eval()


def _trained_like(m):
    """Feedback and value biases at the scale a trained model has (init makes them tiny or zero)."""
    with torch.no_grad():
        for dec in m.decoders:
            dec.linear.weight.normal_(0, m.embed_dim ** -0.5)
            dec.linear2.weight.normal_(0, m.embed_dim ** -0.5)
        for blk in m.blocks:
            blk.attn.qkv.bias.normal_(0, 0.1)
    return m


def _images(m, batch=2):
    return torch.randn(batch, *m.pretrained_cfg["input_size"])


@pytest.mark.parametrize("name", ABSVIT + EMBEDDED_VIT)
def test_shapes_for_every_registered_size(name):
    m = _model(name)
    x = _images(m)
    with torch.inference_mode():
        logits = m(x)
    assert logits.shape == (2, m.num_classes)
    assert torch.isfinite(logits).all()
    if name.startswith("absvit"):
        assert isinstance(m, AbSViT)
        with torch.inference_mode():
            amap = m.attention_map(x, prior=1)
        assert amap.shape == (2, *m.patch_embed.grid_size)


@pytest.mark.parametrize("name,dims", [
    ("absvit_tiny_patch16_224", (192, 12, 3, 16)), ("absvit_small_patch16_224", (384, 12, 6, 16)),
    ("absvit_base_patch16_224", (768, 12, 12, 16)), ("absvit_tiny_patch8_224_gap", (192, 12, 3, 8)),
])
def test_paper_sizes(name, dims):
    m = _model(name)
    assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.patch_embed.patch_size[0]) == dims
    assert m.blocks[0].norm1.eps == 1e-6 and m.blocks[0].attn.qkv.bias is not None
    assert m.blocks[0].mlp.fc1.out_features == 4 * dims[0]


@pytest.mark.parametrize("name", ["absvit_pico_patch8_64", "absvit_tiny_patch8_224_gap"])
def test_matches_naive_reference_from_spec(name):
    m = _trained_like(_model(name))
    x = _images(m)
    with torch.no_grad():
        out = m.forward_train(x)
        ref_bu, ref_td, ref_var = reference_forward(m, x)
        torch.testing.assert_close(out.logits_bottom_up, ref_bu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.logits, ref_td, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.var_loss, ref_var, rtol=1e-5, atol=1e-6)
        prior = torch.randn(m.embed_dim)
        torch.testing.assert_close(m(x, prior=prior, alpha=3.0), reference_forward(m, x, prior, 3.0)[1], rtol=1e-4, atol=1e-5)


def test_pass_two_differs_when_prior_active():
    m = _model()
    x = _images(m)
    with torch.no_grad():
        gap = [(o.logits - o.logits_bottom_up).abs().max().item() for o in (m.forward_train(x, alpha=a) for a in (1.0, 10.0))]
    # at init the decoders are small (std .02), so the top-down effect is small but real,
    # and it grows with alpha (all qkv biases are zero at init, so nothing else differs)
    assert gap[0] > 1e-6 and gap[1] > 5 * gap[0]


def test_pass_two_equals_pass_one_only_without_decoders_and_value_bias():
    m = _trained_like(_model())
    x = _images(m)
    with torch.no_grad():
        for dec in m.decoders:
            dec.linear.weight.zero_()
            dec.linear2.weight.zero_()
        out = m.forward_train(x)
        # zero decoders alone: the value bias still enters twice in pass 2
        assert not torch.allclose(out.logits, out.logits_bottom_up, atol=1e-4)
        for blk in m.blocks:
            blk.attn.qkv.bias[2 * m.embed_dim:].zero_()
        out = m.forward_train(x)
    torch.testing.assert_close(out.logits, out.logits_bottom_up, rtol=1e-5, atol=1e-6)


def test_var_loss_gradient_reaches_only_decoder_first_maps():
    m = _model().train()
    m.forward_train(_images(m)).var_loss.backward()
    with_grad = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {f"decoders.{i}.linear.weight" for i in range(len(m.blocks))}


def test_supervised_gradient_reaches_prompt_and_decoders():
    m = _model().train()
    m.forward_train(_images(m)).logits.sum().backward()
    assert m.prompt.grad.abs().sum() > 0
    assert all(d.linear2.weight.grad.abs().sum() > 0 for d in m.decoders)


def test_training_form_matches_plain_call():
    m = _model()
    x = _images(m)
    with torch.no_grad():
        torch.testing.assert_close(m.forward_train(x).logits, m(x), rtol=0, atol=0)
        torch.testing.assert_close(m.forward_train(x, prior=2, alpha=4.0).logits, m(x, prior=2, alpha=4.0), rtol=0, atol=0)


def test_prior_forms_agree():
    m = _model()
    x = _images(m)
    row = m.head.weight[3].detach()
    with torch.no_grad():
        by_index = m(x, prior=3)
        torch.testing.assert_close(m(x, prior=row), by_index)
        torch.testing.assert_close(m(x, prior=torch.tensor([3, 3])), by_index)
        torch.testing.assert_close(m(x, prior=row.expand(2, -1)), by_index)
        mixed = m(x, prior=torch.tensor([3, 5]))
        torch.testing.assert_close(mixed[0], by_index[0])
        torch.testing.assert_close(mixed[1], m(x, prior=5)[1])
    with pytest.raises(ValueError, match="prior must have shape"):
        m(x, prior=torch.randn(7))


def test_feedback_scale_changes_output():
    m = _model()
    x = _images(m)
    with torch.no_grad():
        assert not torch.allclose(m(x, alpha=1.0), m(x, alpha=10.0), atol=1e-4)
        m.feedback_scale = 10.0
        torch.testing.assert_close(m(x), m(x, alpha=10.0), rtol=0, atol=0)


def test_attention_maps_differ_between_class_priors():
    m = _trained_like(_model())
    x = _images(m, 1)
    a = m.attention_map(x, prior=0, alpha=10.0)
    b = m.attention_map(x, prior=1, alpha=10.0)
    bottom_up = m.attention_map(x, top_down=False)
    assert a.shape == (1, 8, 8)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, bottom_up, atol=1e-4)
    # the bottom-up map is the token norm after depth-3 blocks of an ordinary ViT pass
    with torch.no_grad():
        t = m.embed(x)
        for blk in m.blocks[:1]:
            t = blk(t)
    torch.testing.assert_close(bottom_up, t[:, 1:].norm(dim=-1).reshape(1, 8, 8))


def test_timm_init():
    m = timm.create_model("absvit_small_patch16_224")
    dec = torch.cat([d.linear.weight.flatten() for d in m.decoders] + [d.linear2.weight.flatten() for d in m.decoders])
    assert abs(dec.std().item() - 0.02) < 0.001 and abs(dec.mean().item()) < 0.001
    assert all(blk.attn.qkv.bias.abs().sum() == 0 for blk in m.blocks)
    assert abs(m.prompt.std().item() - 1.0) < 0.15
    assert m.cls_token.abs().max() < 1e-4
    assert "prompt" in m.no_weight_decay() and "pos_embed" in m.no_weight_decay()


def test_embedded_baselines_share_the_vit_keys():
    absvit_keys = set(_model("absvit_pico_patch8_64").state_dict())
    vit_keys = set(_model("vit_pico_patch8_64").state_dict())
    assert absvit_keys - vit_keys == {"prompt"} | {f"decoders.{i}.linear{s}.weight" for i in range(4) for s in ("", "2")}
    assert vit_keys <= absvit_keys


def test_grad_checkpointing_gives_same_gradients():
    m = _model().train()
    x = _images(m)
    m.forward_train(x).logits.sum().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    m.set_grad_checkpointing(True)
    m.forward_train(x).logits.sum().backward()
    for n, g in ref.items():
        torch.testing.assert_close(dict(m.named_parameters())[n].grad, g, rtol=1e-4, atol=1e-6)
