"""The V&L model (absvit.vl.encoders / fusion / model) on the embedded-size (AbS)ViT and a tiny RoBERTa made here."""
import math

import pytest
import timm
import torch

from absvit.errors import CheckpointError
from absvit.models import vit_attention_map  # (importing absvit.models registers the models)
from absvit.vl.encoders import TextEncoder, VisualEncoder
from absvit.vl.fusion import METER
from absvit.vl.model import (ITMHead, RankHead, RetrievalObjective, VQAHead, VQAObjective, clip_prior_loss,
                             lr_schedule, param_groups, recall_at_k)
from tests.helpers import HIDDEN, SENTENCES, encode, images, meter, visual

# -- encoders ----------------------------------------------------------------------------------------------------

def test_text_encoder_priors(roberta_folder, tokenizer):
    text = TextEncoder(roberta_folder).eval()
    ids, mask = encode(tokenizer, ["is there a star?", "what colour is the ring?"])
    tokens = text(ids, mask)
    assert tokens.shape == (2, 12, 24)
    torch.testing.assert_close(text.prior(tokens, ids, "mean"), tokens.sum(1) / 12)  # padding included
    eos = [row.tolist().index(2) for row in ids]
    torch.testing.assert_close(text.prior(tokens, ids, "eos"), torch.stack([tokens[i, e] for i, e in enumerate(eos)]))
    twice = ids.clone()
    twice[0, eos[0] + 1] = 2  # a second </s>: the first one counts
    torch.testing.assert_close(text.prior(tokens, twice, "eos")[0], tokens[0, eos[0]])
    with pytest.raises(ValueError, match="'cls'.*'mean', 'eos'"):
        text.prior(tokens, ids, "cls")


def test_text_encoder_refuses_other_folders(tmp_path, roberta_folder):
    expected = "a RoBERTa folder saved by transformers' save_pretrained"
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'missing'}: no such folder.*{expected}"):
        TextEncoder(tmp_path / "missing")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match=f"{bert}: config.json says model_type 'bert'"):
        TextEncoder(bert)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((roberta_folder / "config.json").read_text())
    with pytest.raises(CheckpointError, match=f"{no_weights}: no weights file in it") as e:
        TextEncoder(no_weights)
    assert "\n" not in str(e.value)


def test_the_text_steers_absvit_and_not_a_vit():
    x = images()
    priors = torch.randn(2, 2, 24, generator=torch.Generator().manual_seed(2))
    absvit = visual("absvit_pico_patch8_64")
    with torch.no_grad():
        a, b = (absvit(x, p)[0] for p in priors)
    assert a.shape == (2, 65, 96) and not torch.allclose(a, b, atol=1e-4)
    vit = visual("vit_pico_patch8_64")
    with torch.no_grad():
        a, b = (vit(x, p)[0] for p in priors)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, vit.vit.forward_features(x))


def test_feedback_off_gives_pass_one():
    x = images()
    encoder = visual("absvit_pico_patch8_64", feedback=False)
    vit = encoder.vit
    with torch.no_grad():
        tokens, var_loss = encoder(x, torch.randn(2, 24))
        torch.testing.assert_close(tokens, vit.norm(vit.run_blocks(vit.embed(x))[0]))
    assert var_loss.item() == 0 and encoder.prompt_decoder is None
    assert not any(p.requires_grad for p in vit.decoders.parameters())
    with_feedback = visual("absvit_pico_patch8_64")  # same seed, same ViT weights
    with torch.no_grad():
        assert not torch.allclose(with_feedback(x, torch.randn(2, 24))[0], tokens, atol=1e-4)


def test_top_down_path_is_the_official_one():
    """pass 2 = run_blocks(x0, feedback(((x * mask) . p) p * 5)) with x the normed pass-1 tokens."""
    x, prior = images(), torch.randn(2, 24)
    encoder = visual("absvit_pico_patch8_64")
    vit = encoder.vit
    with torch.no_grad():
        x0 = vit.embed(x)
        tokens = vit.norm(vit.run_blocks(x0)[0])
        p = encoder.prompt_decoder(prior)
        cos = torch.nn.functional.cosine_similarity(tokens, p[:, None], dim=-1)[..., None]
        masked = tokens * cos.clamp(0, 1)
        fed = masked @ (p[:, :, None] @ p[:, None, :]) * 5
        out, trace = vit.run_blocks(x0, vit.feedback(fed), record=True)
        got, var_loss = encoder(x, prior)
    torch.testing.assert_close(got, vit.norm(out), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(var_loss, vit.variational_loss(trace), atol=1e-5, rtol=1e-4)


def test_the_text_prior_moves_absvit_attention_map_only(roberta_folder, tokenizer):
    x = images(1).expand(2, -1, -1, -1)
    ids, mask = encode(tokenizer, ["what colour is the ring?", "is there a star?"])
    model = meter(roberta_folder, "absvit_pico_patch8_64").eval()
    vit = meter(roberta_folder, "vit_pico_patch8_64").eval()
    for kind in ("class attention", "token norm"):
        maps = model.attention_map(x, ids, mask, "mean", kind=kind)
        assert maps.shape == (2, 8, 8) and not torch.allclose(maps[0], maps[1], atol=1e-4), kind
        bottom_up = model.attention_map(x, ids, mask, "mean", top_down=False, kind=kind)
        torch.testing.assert_close(bottom_up[0], bottom_up[1])
        plain = vit.attention_map(x, ids, mask, "mean", kind=kind)
        torch.testing.assert_close(plain[0], plain[1])
    bottom_up = model.attention_map(x, ids, mask, "mean", top_down=False, kind="token norm")
    torch.testing.assert_close(bottom_up, model.visual.vit.attention_map(x, top_down=False))
    torch.testing.assert_close(vit.attention_map(x, ids, mask, "mean", kind="token norm"),
                               vit_attention_map(vit.visual.vit, x))
    with pytest.raises(ValueError, match="needs the text prior"):
        model.visual.attention_map(x)
    with pytest.raises(ValueError, match="needs the text prior"):
        model.visual.class_attention_map(x)


# -- fusion ------------------------------------------------------------------------------------------------------

def test_meter_outputs_and_padding(roberta_folder, tokenizer):
    torch.manual_seed(0)
    vit = timm.create_model("vit_pico_patch8_64")
    before = {k: v.clone() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    model = METER(VisualEncoder(vit, text_dim=24), TextEncoder(roberta_folder), hidden=HIDDEN, heads=2, layers=2).eval()
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in before.items())  # the encoders keep their weights
    ids, mask = encode(tokenizer, ["is there a star?", "how many objects?"])
    x = images()
    with torch.no_grad():
        out = model(x, ids, mask, "eos")
        assert out["cls_feats"].shape == (2, 2 * HIDDEN) and out["prior"] is None and out["var_loss"].item() == 0
        assert out["image_cls"].shape == (2, 96)
        scrambled = torch.where(mask.bool(), ids, torch.full_like(ids, 7))  # other tokens where the mask says padding
        torch.testing.assert_close(model(x, scrambled, mask, "eos")["cls_feats"], out["cls_feats"])
        unmasked = model(x, scrambled, torch.ones_like(mask), "eos")["cls_feats"]
    assert not torch.allclose(unmasked, out["cls_feats"], atol=1e-4)


def test_meter_projects_the_detached_prior(roberta_folder, tokenizer):
    model = meter(roberta_folder, "absvit_pico_patch8_64")
    ids, mask = encode(tokenizer, ["is there a star?", "how many objects?"])
    out = model(images(), ids, mask, "mean")
    with torch.no_grad():
        expected = model.visual.prompt_decoder(model.text_prior(ids, mask, "mean"))
    torch.testing.assert_close(out["prior"], expected)
    out["prior"].sum().backward()
    assert model.visual.prompt_decoder.weight.grad is not None
    assert all(p.grad is None for p in model.text.parameters())


# -- objectives --------------------------------------------------------------------------------------------------

def test_clip_prior_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    prior = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    def unit(v):
        return [c / math.hypot(*v) for c in v]

    sim = [[sum(a * b for a, b in zip(unit(i), unit(p))) / 0.07 for p in prior.tolist()] for i in image.tolist()]

    def ce(row, target):
        return -row[target] + math.log(sum(math.exp(v) for v in row))

    per_item = [(ce(sim[i], i) + ce([sim[j][i] for j in range(3)], i)) / 2 for i in range(3)]
    assert clip_prior_loss(image, prior).item() == pytest.approx(sum(per_item) / 3, rel=1e-5)
    mask = torch.tensor([1.0, 0.0, 1.0])
    assert clip_prior_loss(image, prior, mask=mask).item() == pytest.approx((per_item[0] + per_item[2]) / 2, rel=1e-5)


def grad_norm(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


def test_vqa_objective_trains_every_part(roberta_folder, tokenizer):
    model = meter(roberta_folder, "absvit_pico_patch8_64").train()
    objective = VQAObjective(model, VQAHead(2 * HIDDEN, 7), prior_loss="clip")
    ids, mask = encode(tokenizer, ["is there a star?", "how many objects?"])
    targets = torch.zeros(2, 7)
    targets[0, 3], targets[1, 1] = 1.0, 0.6
    loss = objective((images(), ids, mask), targets)
    assert torch.isfinite(loss)
    loss.backward()
    vit = model.visual.vit
    for part in (model.visual.prompt_decoder, objective.vqa_classifier, model.cross_modal_image_layers, model.text,
                 vit.blocks, *(d.linear for d in vit.decoders), *(d.linear2 for d in vit.decoders)):
        assert grad_norm(part) > 0, part
    assert objective.logits((images(), ids, mask)).shape == (2, 7)
    with pytest.raises(ValueError, match="'clip'.*AbSViT"):
        VQAObjective(meter(roberta_folder, "vit_pico_patch8_64"), VQAHead(2 * HIDDEN, 7), prior_loss="clip")
    with pytest.raises(ValueError, match="'infonce'.*'none', 'clip'"):
        VQAObjective(model, VQAHead(2 * HIDDEN, 7), prior_loss="infonce")


def test_vqa_loss_is_bce_times_answers(roberta_folder, tokenizer):
    model = meter(roberta_folder, "vit_pico_patch8_64").eval()
    objective = VQAObjective(model, VQAHead(2 * HIDDEN, 5), var_weight=0.3)
    ids, mask = encode(tokenizer, ["is there a star?", "how many objects?"])
    targets = torch.tensor([[0.0, 0.3, 1.0, 0.0, 0.0], [0.6, 0.0, 0.0, 0.0, 0.9]])
    with torch.no_grad():
        logits = objective.logits((images(), ids, mask))
        expected = sum(-(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))
                       for t, z in zip(targets.flatten().tolist(), logits.flatten().tolist())) / 10 * 5
        assert objective((images(), ids, mask), targets).item() == pytest.approx(expected, rel=1e-5)


def test_retrieval_objective(roberta_folder, tokenizer):
    model = meter(roberta_folder, "absvit_pico_patch8_64").train()
    itm = ITMHead(2 * HIDDEN)
    rank = RankHead(2 * HIDDEN, itm=itm)
    torch.testing.assert_close(rank.fc.weight, itm.fc.weight[1:])
    objective = RetrievalObjective(model, itm, rank, negatives=2, prior_loss="clip",
                                   generator=torch.Generator().manual_seed(0))
    ids, mask = encode(tokenizer, ["a red ring and a blue star.", "is there a star?", "how many objects?"])
    neg_ids, neg_mask = encode(tokenizer, SENTENCES[:6])
    inputs = (images(3), ids, mask, neg_ids.view(3, 2, -1), neg_mask.view(3, 2, -1))
    loss = objective(inputs, None)
    assert torch.isfinite(loss)
    loss.backward()
    vit = model.visual.vit
    for part in (model.visual.prompt_decoder, rank, model.cross_modal_text_layers, model.text,
                 *(d.linear for d in vit.decoders), *(d.linear2 for d in vit.decoders)):
        assert grad_norm(part) > 0, part
    assert all(p.grad is None and not p.requires_grad for p in itm.parameters())  # frozen, as METER
    assert objective.score(images(3), ids, mask).shape == (3,)
    with pytest.raises(ValueError, match="expected 2 negative texts per image"):
        objective((images(3), ids, mask, neg_ids.view(3, 2, -1)[:, :1], neg_mask.view(3, 2, -1)[:, :1]))


def test_itm_mismatches_are_seeded(roberta_folder):
    model, itm = meter(roberta_folder, "vit_pico_patch8_64"), ITMHead(2 * HIDDEN)
    draws = []
    for _ in range(2):
        objective = RetrievalObjective(model, itm, RankHead(2 * HIDDEN), generator=torch.Generator().manual_seed(5))
        draws.append([objective.mismatched(7, torch.device("cpu")) for _ in range(3)])
    for (labels, index), (labels2, index2) in zip(*draws):
        assert torch.equal(labels, labels2) and torch.equal(index, index2)
        assert labels.sum() == 3
        own = index == torch.arange(7)
        assert torch.equal(own, labels.bool())  # matched pairs keep their image, the others get another one
    assert not all(torch.equal(draws[0][0][0], d[0]) for d in draws[0][1:])  # a new draw each step


# -- optimiser ---------------------------------------------------------------------------------------------------

def groups_by_name(objective, **mults):
    named = {id(p): n for n, p in objective.named_parameters()}
    groups = param_groups(objective, lr=1e-5, **mults)
    return groups, {named[id(p)]: g["name"] for g in groups for p in g["params"]}


def test_param_groups_are_meters_by_name(roberta_folder):
    """METER's set_schedule by parameter name: heads x head_mult, cross_modal x fusion_mult, `decode` x feedback_mult;
    no decay for biases and norm weights (not the VQA head's LayerNorm: its name is `vqa_classifier.1`); the feedback's
    no-decay parameters (prompt_decoder.bias) in no group; rank_output at the base lr; the frozen ITM head nowhere."""
    vqa = VQAObjective(meter(roberta_folder, "absvit_pico_patch8_64"), VQAHead(2 * HIDDEN, 7))
    groups, where = groups_by_name(vqa)  # the VQA multipliers: heads x50, fusion x10, feedback x3
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({
        "encoders": 1e-5, "encoders/no_decay": 1e-5, "fusion": 1e-4, "fusion/no_decay": 1e-4, "heads": 5e-4,
        "heads/no_decay": 5e-4, "feedback": 3e-5})
    assert {g["name"]: g["weight_decay"] for g in groups} == {
        name: 0.0 if name.endswith("/no_decay") else 0.01 for name in (g["name"] for g in groups)}
    expect = {
        "meter.visual.prompt_decoder.weight": "feedback", "meter.visual.vit.decoders.0.linear.weight": "feedback",
        "meter.visual.vit.decoders.3.linear2.weight": "feedback",
        "meter.cross_modal_image_layers.1.self_attn.in_proj_weight": "fusion",
        "meter.cross_modal_text_layers.0.ffn_norm.weight": "fusion/no_decay",
        "meter.cross_modal_text_pooler.dense.bias": "fusion/no_decay",
        "meter.token_type_embeddings.weight": "encoders",  # as METER: not a cross_modal name
        "vqa_classifier.0.weight": "heads", "vqa_classifier.1.weight": "heads",  # the head's LayerNorm: decayed
        "vqa_classifier.1.bias": "heads/no_decay", "vqa_classifier.3.bias": "heads/no_decay",
        "meter.visual.vit.blocks.0.attn.qkv.weight": "encoders", "meter.visual.vit.pos_embed": "encoders",
        "meter.visual.vit.cls_token": "encoders", "meter.visual.vit.blocks.1.norm1.weight": "encoders/no_decay",
        "meter.visual.vit.norm.weight": "encoders/no_decay",
        "meter.text.roberta.embeddings.LayerNorm.weight": "encoders/no_decay",
        "meter.text.roberta.encoder.layer.1.attention.self.query.weight": "encoders"}
    assert {name: where.get(name) for name in expect} == expect
    assert "meter.visual.prompt_decoder.bias" not in where  # in no group: never trained, as in METER
    assert "meter.visual.vit.prompt" not in where  # the learned prompt is not used: frozen
    trained = {n for n, p in vqa.named_parameters() if p.requires_grad}
    assert set(where) == trained - {"meter.visual.prompt_decoder.bias"}

    itm = ITMHead(2 * HIDDEN)
    retrieval = RetrievalObjective(meter(roberta_folder, "absvit_pico_patch8_64"), itm, RankHead(2 * HIDDEN, itm=itm))
    groups, where = groups_by_name(retrieval, head_mult=5, fusion_mult=10, feedback_mult=3)  # the retrieval recipe's
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"encoders": 1e-5, "encoders/no_decay": 1e-5, "fusion": 1e-4, "fusion/no_decay": 1e-4,
                                 "feedback": 3e-5})  # no head group: the ITM head is frozen
    assert (where["rank_output.fc.weight"], where["rank_output.fc.bias"]) == ("encoders", "encoders/no_decay")
    assert not any(name.startswith("itm_score") for name in where)


def test_lr_schedule():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 1e-5}, {"params": params[1:], "lr": 5e-4}], lr=1e-5)
    scheduler = lr_schedule(optimizer, total_steps=100)

    def lrs(step):
        scheduler.step_update(step)
        return [g["lr"] for g in optimizer.param_groups]

    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.0]
    assert lrs(0) == [0.0, 0.0]
    assert lrs(5) == pytest.approx([0.5e-5, 2.5e-4])
    assert lrs(10) == pytest.approx([1e-5, 5e-4])
    assert lrs(55) == pytest.approx([0.5e-5, 2.5e-4])
    assert lrs(100) == pytest.approx([0.0, 0.0])
    with pytest.raises(ValueError, match="total_steps"):
        lr_schedule(optimizer, total_steps=0)


def test_the_engine_trains_vqa(roberta_folder, tokenizer):
    """engine.train_one_epoch on VQAObjective with METER's optimiser and schedule: the contract of the stage."""
    from absvit import engine
    from absvit.progress import Progress

    objective = VQAObjective(meter(roberta_folder, "absvit_pico_patch8_64"), VQAHead(2 * HIDDEN, 7))
    ids, mask = encode(tokenizer, ["is there a star?", "how many objects?"])
    loader = [((images(), ids, mask), torch.eye(7)[:2] * 0.9)] * 3
    optimizer = torch.optim.AdamW(param_groups(objective, lr=1e-3), betas=(0.9, 0.98), eps=1e-8)
    scheduler = lr_schedule(optimizer, total_steps=3, warmup=0.5)  # 1 warm-up step
    before = [p.detach().clone() for p in objective.parameters()]
    lrs = []

    def on_step(step, loss, lr):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])

    engine.train_one_epoch(objective, loader, optimizer, torch.device("cpu"), progress=Progress("vqa", 3),
                           finite=engine.FiniteCheck("none"), where="step {step}", on_step=on_step)
    assert lrs == pytest.approx([1e-3, 0.5e-3, 0.0])
    changed = [not torch.equal(a, b) for a, b in zip(before, objective.parameters())]
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert changed == [id(p) in grouped for p in objective.parameters()]
    assert not changed[[n for n, _ in objective.named_parameters()].index("meter.visual.prompt_decoder.bias")]


# -- retrieval metric --------------------------------------------------------------------------------------------

def test_recall_at_k_on_a_hand_made_matrix():
    # 3 images, 5 texts; texts 0, 1 are image 0's, text 2 image 1's, texts 3, 4 image 2's
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.2],   # image 0: best text 0 (own)
                           [0.7, 0.6, 0.5, 0.9, 0.0],   # image 1: texts ranked 3, 0, 1, 2: own (2) 4th
                           [0.1, 0.2, 0.3, 0.4, 0.35]])  # image 2: best text 3 (own)
    text_image = torch.tensor([0, 0, 1, 2, 2])
    got = recall_at_k(scores, text_image, ks=(1, 2, 4))
    # text -> image: text 0 -> image 0 (own); 1 -> images 1, 2, 0 (3rd); 2 -> images 0, 1 (2nd);
    # 3 -> images 1, 2 (2nd); 4 -> image 2 (own). k = 4 is capped at the 3 images.
    assert got == pytest.approx({"i2t_r1": 200 / 3, "i2t_r2": 200 / 3, "i2t_r4": 100.0,
                                 "t2i_r1": 40.0, "t2i_r2": 80.0, "t2i_r4": 100.0})
    with pytest.raises(ValueError, match="one image index per text"):
        recall_at_k(scores, text_image[:4])
