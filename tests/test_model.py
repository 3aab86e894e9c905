import subprocess
import sys

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from absvit.models import AbSViT, map_depth, vit_attention_map, vit_first_layer_input
from absvit.models.segmenter import Segmenter, build_backbone
from tests.reference import reference_forward

ABSVIT = ["absvit_tiny_patch16_224", "absvit_small_patch16_224", "absvit_base_patch16_224",
          "absvit_tiny_patch8_224_gap", "absvit_pico_patch8_64", "absvit_pico_patch8_64_gap", "absvit_nano_patch8_64"]
EMBEDDED_VIT = ["vit_pico_patch8_64", "vit_pico_patch8_64_gap", "vit_nano_patch8_64"]
OURS = ABSVIT + EMBEDDED_VIT + ["vit_tiny_patch8_224_gap"]


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


def test_alpha_changes_output():
    m = _model()
    x = _images(m)
    with torch.no_grad():
        assert m.alpha == 1.0 and not torch.allclose(m(x, alpha=1.0), m(x, alpha=10.0), atol=1e-4)
        m.alpha = 10.0
        torch.testing.assert_close(m(x), m(x, alpha=10.0), rtol=0, atol=0)
        built = _model(alpha=10.0)
        built.load_state_dict(m.state_dict())
        assert built.alpha == 10.0
        torch.testing.assert_close(built(x), m(x), rtol=0, atol=0)


def test_attention_maps_differ_between_class_priors():
    m = _trained_like(_model())
    x = _images(m, 1)
    a = m.attention_map(x, prior=0, alpha=10.0)
    b = m.attention_map(x, prior=1, alpha=10.0)
    bottom_up = m.attention_map(x, top_down=False)
    assert a.shape == (1, 8, 8)
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, bottom_up, atol=1e-4)
    # the bottom-up map is the token norm after 3/4 of the blocks of an ordinary ViT pass (3 of pico's 4)
    assert map_depth(len(m.blocks)) == 3
    with torch.no_grad():
        t = m.embed(x)
        for blk in m.blocks[:3]:
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


# timm's forward_intermediates options, each case run on AbSViT and on timm's ViT of the same size
INTERMEDIATES_CASES = [
    {}, dict(indices=2), dict(indices=[0, 2]), dict(indices=[-1, -3]), dict(indices=[3, 1]),
    dict(indices=[1], norm=True), dict(output_fmt="NLC"), dict(indices=[0, -1], return_prefix_tokens=True),
    dict(return_prefix_tokens=True, intermediates_only=True, output_fmt="NLC"), dict(indices=[1], stop_early=True),
    dict(indices=1, norm=True, intermediates_only=True), dict(output_dict=True, return_prefix_tokens=True),
    dict(output_dict=True, intermediates_only=True),
]


def _structure(out):
    """Types, lengths and shapes of a forward_intermediates result."""
    if torch.is_tensor(out):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: _structure(v) for k, v in out.items()}
    return type(out).__name__, [_structure(v) for v in out]


def test_forward_intermediates_follows_timm_contract():
    m, vit = _model(), _model("vit_pico_patch8_64")
    x = _images(m)
    with torch.no_grad():
        for case in INTERMEDIATES_CASES:
            assert _structure(m.forward_intermediates(x, **case)) == _structure(vit.forward_intermediates(x, **case)), case
        for bad in (0, 5, [4], [-5]):
            for model in (m, vit):
                with pytest.raises(AssertionError, match="out of range"):
                    model.forward_intermediates(x, bad)
        with pytest.raises(NotImplementedError, match="attention mask"):
            m.forward_intermediates(x, attn_mask=torch.zeros(65, 65))
        # timm's DINO-style getter goes through it too
        assert [t.shape for t in m.get_intermediate_layers(x, 2, reshape=True)] == [(2, 96, 8, 8)] * 2


def test_forward_intermediates_are_pass_two():
    m = _trained_like(_model())
    x = _images(m)
    with torch.no_grad():
        final, maps = m.forward_intermediates(x, prior=3, alpha=2.0)
        torch.testing.assert_close(final, m.forward_features(x, prior=3, alpha=2.0))
        pass_one = VisionTransformer.forward_intermediates(m, x, intermediates_only=True)
        assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(maps, pass_one))
        stopped = m.forward_intermediates(x, [1], stop_early=True, intermediates_only=True, prior=3, alpha=2.0)
        torch.testing.assert_close(stopped[0], maps[1], rtol=0, atol=0)


def test_without_feedback_features_equal_timm_vit():
    """Zero decoders give td = 0, and v = W_v (x + td) + 2 b_v is a plain ViT's value once b_v = 0 too."""
    m, vit = _trained_like(_model()), _model("vit_pico_patch8_64")
    with torch.no_grad():
        for dec in m.decoders:
            dec.linear.weight.zero_()
            dec.linear2.weight.zero_()
        for blk in m.blocks:
            blk.attn.qkv.bias[2 * m.embed_dim:].zero_()
            blk.norm1.weight.normal_(1, 0.1)
        m.norm.bias.normal_(0, 0.1)
    vit.load_state_dict({k: v for k, v in m.state_dict().items() if k in vit.state_dict()})
    x = _images(m)
    with torch.no_grad():
        for case in INTERMEDIATES_CASES:
            torch.testing.assert_close(m.forward_intermediates(x, **case), vit.forward_intermediates(x, **case),
                                       rtol=1e-5, atol=1e-5, msg=lambda msg: f"{case}: {msg}")


def test_features_only_gives_the_pass_two_maps():
    torch.manual_seed(1)
    fm = timm.create_model("absvit_pico_patch8_64", features_only=True).eval()
    m = fm.model
    _trained_like(m)
    assert fm.feature_info.channels() == [96] * 4 and fm.feature_info.reduction() == [8] * 4
    assert fm.out_indices == [0, 1, 2, 3] and len(m.blocks) == len(m.decoders) == 4  # nothing pruned but the head
    assert m.num_classes == 0 and not isinstance(m.norm, torch.nn.Identity)
    x = _images(m)
    with torch.no_grad():
        maps = fm(x)
        assert [t.shape for t in maps] == [(2, 96, 8, 8)] * 4
        torch.testing.assert_close(maps, m.forward_intermediates(x, [0, 1, 2, 3], intermediates_only=True), rtol=0, atol=0)
        pass_one = VisionTransformer.forward_intermediates(m, x, intermediates_only=True)
        assert not torch.allclose(maps[-1], pass_one[-1], atol=1e-4)
        with pytest.raises(ValueError, match="classifier head"):
            m(x, prior=3)
    picked = timm.create_model("absvit_tiny_patch16_224", features_only=True, out_indices=(-2, -1))
    assert picked.out_indices == [10, 11] and picked.feature_info.channels() == [192, 192]
    assert timm.create_model("vit_pico_patch8_64", features_only=True).feature_info.channels() == [96] * 4


def test_import_absvit_is_light_and_absvit_models_registers():
    code = ("import sys, absvit; assert not {'torch', 'timm'} & set(sys.modules), sorted(sys.modules); "
            "import timm; assert not timm.is_model('absvit_pico_patch8_64'); "
            "import absvit.models; assert timm.is_model('absvit_pico_patch8_64') and timm.is_model('vit_pico_patch8_64')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_vit_readouts_are_absvit_bottom_up_and_prompt_values():
    """The plain-ViT map and first-layer input equal AbSViT's without feedback (same weights), and on an
    AbSViT they are its pass-2 values with the prompt prior."""
    m, vit = _trained_like(_model()), _model("vit_pico_patch8_64")
    vit.load_state_dict({k: v for k, v in m.state_dict().items() if k in vit.state_dict()})
    x = _images(m)
    torch.testing.assert_close(vit_attention_map(vit, x), m.attention_map(x, top_down=False))
    torch.testing.assert_close(vit_attention_map(m, x), m.attention_map(x))
    torch.testing.assert_close(vit_first_layer_input(vit, x), m.first_layer_inputs(x, top_down=False)[0])
    assert vit_first_layer_input(vit, x).shape == (2, 65, 96)


def test_segmenter_param_groups_leave_norms_and_no_weight_decay_names_undecayed():
    with pytest.warns(UserWarning, match="random init"):
        model = Segmenter(build_backbone("absvit", "absvit_pico_patch8_64", drop_path=0.0), 21, channels=16,
                          aux_channels=8)
    decay, plain = model.param_groups(0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {"backbone.vit.pos_embed", "backbone.vit.cls_token", "backbone.vit.prompt", "backbone.vit.norm.weight",
            "backbone.vit.blocks.0.norm1.bias", "decode_head.fuse.1.weight"} <= plain_names
    assert {"backbone.vit.blocks.0.attn.qkv.bias", "backbone.vit.decoders.0.linear.weight"} <= {
        names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0


# -- as timm's own model tests see the models: fixed input size, TorchScript, FX ------------------------

@pytest.mark.parametrize("name", OURS)
def test_the_fixed_input_size_is_declared(name):
    """The position embedding fixes the size: the cfg says so, and timm's data config gives the model's own size."""
    assert timm.get_pretrained_cfg_value(name, "fixed_input_size") is True
    with torch.device("meta"):
        m = timm.create_model(name)
        assert timm.data.resolve_model_data_config(m)["input_size"] == (3, *m.patch_embed.img_size)
        with pytest.raises(AssertionError, match="doesn't match model"):  # why timm must not feed it another size
            m(torch.empty(1, 3, 32, 32))


# every form of prior and alpha (the pico model: D = 96)
PRIORS = [{}, dict(prior=3), dict(prior=torch.tensor([3, 5]), alpha=2.0), dict(prior=torch.linspace(-1, 1, 96), alpha=4.0),
          dict(prior=torch.linspace(-1, 1, 96).expand(2, -1))]


@pytest.mark.parametrize("name", ["absvit_pico_patch8_64", "absvit_tiny_patch8_224_gap", "vit_pico_patch8_64"])
def test_scripted_model_gives_the_eager_output(name):
    with timm.set_scriptable(True):
        m = _model(name)
    if isinstance(m, AbSViT):
        _trained_like(m)
    scripted = torch.jit.script(m)
    x = _images(m)
    with torch.no_grad():
        for kw in PRIORS if name == "absvit_pico_patch8_64" else [{}]:
            torch.testing.assert_close(scripted(x, **kw), m(x, **kw), rtol=1e-5, atol=1e-6,
                                       msg=lambda msg, kw=kw: f"{kw}: {msg}")


def _fx_model(m):
    """timm's FX feature extractor of the model's output (its tests' ``_create_fx_model``, one output)."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(m, tracer_kwargs=kwargs)
    return create_feature_extractor(m, train_return_nodes=train_nodes[-1:], eval_return_nodes=eval_nodes[-1:],
                                    tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", ["absvit_pico_patch8_64", "absvit_tiny_patch8_224_gap"])
def test_fx_trace_is_the_eager_model_and_trains_every_parameter(name):
    m = _trained_like(_model(name))
    fx, x = _fx_model(m), _images(m)
    with torch.no_grad():
        for kw in PRIORS if name == "absvit_pico_patch8_64" else [{}]:
            (out,) = fx(x, **kw).values()
            assert torch.equal(out, m(x, **kw)), kw
    m.train()
    (out,) = _fx_model(m)(x).values()
    out.mean().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []
