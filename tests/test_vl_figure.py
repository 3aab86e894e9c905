"""Figure 5's map as the official V&L demo draws it (``demo/visualize_attention.ipynb``): the last block's
class-token-to-patch attention summed over heads, the question unpadded, the 0.5 / 0.5 display."""
import numpy as np
import torch
from PIL import Image

from absvit.figures.scores import VL_DISPLAY_HIGH, display
from absvit.vl.figure import maps_of
from absvit.vl.model import VQAHead, VQAObjective
from absvit.vl.transforms import vl_transform
from tests.helpers import HIDDEN, encode, images, meter


def timm_class_attention(block, x):
    """The class token's attention on the patches summed over heads, read off timm's own unfused ``Attention``
    (its softmax weights are the input of ``attn_drop``) holding ``block``'s weights, on the block input ``x``."""
    from timm.layers import Attention

    attn = Attention(x.shape[-1], num_heads=block.attn.num_heads, qkv_bias=True)
    attn.load_state_dict(block.attn.state_dict())
    attn.fused_attn = False
    seen = []
    attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(out))
    attn(block.norm1(x))
    return seen[0][:, :, 0, 1:].sum(dim=1).reshape(x.shape[0], 8, 8)


def test_figure5_map_is_the_last_blocks_class_token_attention(roberta_folder, tokenizer):
    """The official V&L demo's map (forward_att_vis): pass 2 with the text prior's top-down signals up to the last
    block, whose class-token-to-patch attention (summed over heads) is the map; bottom-up and a ViT without them."""
    x = images(2)
    ids, mask = encode(tokenizer, ["what colour is the ring?", "is there a star?"])
    model = meter(roberta_folder, "absvit_pico_patch8_64").eval()
    absvit = model.visual.vit
    with torch.no_grad():
        x0 = absvit.embed(x)
        tds = model.visual.top_down_signals(x0, model.text_prior(ids, mask, "mean"))
        h = x0
        for block, td in zip(absvit.blocks[:-1], tds):
            h = block(h, td)
        expected = timm_class_attention(absvit.blocks[-1], h)
        h = x0
        for block in absvit.blocks[:-1]:
            h = block(h)
        expected_bu = timm_class_attention(absvit.blocks[-1], h)
    torch.testing.assert_close(model.attention_map(x, ids, mask, "mean"), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.attention_map(x, ids, mask, "mean", top_down=False), expected_bu, rtol=1e-5,
                               atol=1e-6)
    assert torch.allclose(expected.sum(dim=(1, 2)), torch.full((2,), 3.0), atol=0.2)  # 3 heads, most mass on patches
    vit = meter(roberta_folder, "vit_pico_patch8_64").eval()
    with torch.no_grad():
        h = vit.visual.vit.norm_pre(vit.visual.vit._pos_embed(vit.visual.vit.patch_embed(x)))
        for block in vit.visual.vit.blocks[:-1]:
            h = block(h)
        expected = timm_class_attention(vit.visual.vit.blocks[-1], h)
    torch.testing.assert_close(vit.attention_map(x, ids, mask, "mean"), expected, rtol=1e-5, atol=1e-6)


def test_figure5_prior_is_the_unpadded_question_and_its_display_is_the_demos(tmp_path, roberta_folder, tokenizer):
    """Figure 5 tokenises the question without padding (the demo's get_prompt: the VQA prior is the mean of its own
    tokens) and shows a map as clamp(map - (0.5 max + 0.5 min), 0)."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    objective = VQAObjective(meter(roberta_folder, "absvit_pico_patch8_64"), VQAHead(2 * HIDDEN, 3)).eval()
    question = "is there a star?"
    vl = {"recipe": {"img_size": 64, "max_text_len": 12}, "text_encoder": str(roberta_folder)}
    got = maps_of(objective, [{"image": tmp_path / "a.png", "question": question}], vl, top_down=True,
                  kind="class attention", device=torch.device("cpu"))[0]
    with Image.open(tmp_path / "a.png") as im:
        x = vl_transform(64, False)(im.convert("RGB"))[None]
    own = tokenizer(question, return_tensors="pt")
    assert own["attention_mask"].all() and own["input_ids"].shape[1] < 12
    expected = objective.meter.attention_map(x, own["input_ids"], own["attention_mask"], "mean")[0]
    padded = objective.meter.attention_map(x, *encode(tokenizer, [question]), "mean")[0]
    assert np.allclose(got, expected.numpy(), atol=1e-6) and not np.allclose(got, padded.numpy(), atol=1e-4)
    assert display(np.array([[1.0, 2.0], [3.0, 5.0]]), VL_DISPLAY_HIGH).tolist() == [[0.0, 0.0], [0.0, 2.0]]
