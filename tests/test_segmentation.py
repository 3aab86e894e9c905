"""Segmentation: readers of the three layouts, mIoU, backbones' feature maps, fine-tuning and resume."""
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix

from absvit.data.sampling import IterationSampler
from absvit.data.segmentation import IGNORE, SegmentationFolder
from absvit.data.synthetic_seg import generate_segmentation
from absvit.errors import CheckpointError, DatasetError
from absvit.models.segmenter import Segmenter, ViTFeatures, build_backbone, vit_taps
from absvit.recipe import SegmentRecipe
from absvit.segment import iou_from_confusion, segment

LABEL = np.array([[0, 1, 2, 255], [3, 4, 5, 6], [7, 8, 9, 10], [0, 0, 1, 1]], dtype=np.uint8)


def _image(path, h=4, w=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)


def _label(path, array, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array, mode="P" if palette else "L")
    if palette:
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    im.save(path)


def test_voc_reader_keeps_indices_of_palette_pngs_and_255(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for split, name in (("train", "a"), ("val", "b")):
        _image(voc / "JPEGImages" / f"{name}.jpg")
        _label(voc / "SegmentationClass" / f"{name}.png", LABEL, palette=True)
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(name + "\n")
    image, label = SegmentationFolder("voc", tmp_path, "val").load(0)
    assert image.shape == (3, 4, 4) and label.tolist() == LABEL.tolist()
    # with the augmented set present, training reads SegmentationClassAug and aug.txt
    _label(voc / "SegmentationClassAug" / "c.png", np.zeros((4, 4), np.uint8))
    _image(voc / "JPEGImages" / "c.jpg")
    with pytest.raises(DatasetError, match="aug.txt does not"):
        SegmentationFolder("voc", tmp_path, "train")
    (voc / "ImageSets" / "Segmentation" / "aug.txt").write_text("a\nc\n")
    _label(voc / "SegmentationClassAug" / "a.png", LABEL)
    train = SegmentationFolder("voc", tmp_path, "train")
    assert [p[1].parent.name for p in train.pairs] == ["SegmentationClassAug"] * 2


def test_cityscapes_reader_pairs_images_with_train_ids(tmp_path):
    _image(tmp_path / "leftImg8bit" / "val" / "bonn" / "bonn_000000_000019_leftImg8bit.png")
    _label(tmp_path / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelTrainIds.png", LABEL)
    data = SegmentationFolder("cityscapes", tmp_path, "val")
    assert len(data) == 1 and data.load(0)[1].tolist() == LABEL.tolist()


def test_cityscapes_missing_label_is_named(tmp_path):
    _image(tmp_path / "leftImg8bit" / "val" / "ulm" / "ulm_000001_000002_leftImg8bit.png")
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="ulm_000001_000002_gtFine_labelTrainIds.png"):
        SegmentationFolder("cityscapes", tmp_path, "val")


def test_ade20k_reader_ignores_zero_and_shifts_the_rest(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    _image(ade / "images" / "validation" / "ADE_val_00000001.jpg", 2, 2)
    _label(ade / "annotations" / "validation" / "ADE_val_00000001.png", np.array([[0, 1], [150, 7]], np.uint8))
    label = SegmentationFolder("ade20k", tmp_path, "val").load(0)[1]
    assert label.tolist() == [[IGNORE, 0], [149, 6]]


def test_missing_root_and_wrong_label_size_are_named(tmp_path):
    with pytest.raises(DatasetError, match="ADEChallengeData2016/images/validation"):
        SegmentationFolder("ade20k", tmp_path / "nowhere", "val")
    ade = tmp_path / "ADEChallengeData2016"
    _image(ade / "images" / "training" / "x.jpg", 4, 4)
    _label(ade / "annotations" / "training" / "x.png", np.zeros((3, 4), np.uint8))
    with pytest.raises(DatasetError, match="x.png: expected a single-channel label map of size"):
        SegmentationFolder("ade20k", tmp_path, "train")[0]


def test_miou_matches_a_hand_computed_confusion_matrix():
    # rows: truth, columns: prediction. IoU_0 = 5 / (6 + 7 - 5), IoU_1 = 3 / (5 + 4 - 3), class 2 absent -> NaN
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    scores = iou_from_confusion(cm)
    assert scores["iou"][:2] == [0.625, 0.5] and np.isnan(scores["iou"][2])
    assert scores["miou"] == pytest.approx(56.25) and scores["aacc"] == pytest.approx(100 * 8 / 11)
    # the same matrix from pixels, 255 ignored as the evaluation does
    truth = torch.tensor([0] * 6 + [1] * 5 + [255] * 4)
    pred = torch.tensor([0] * 5 + [1] + [0] * 2 + [1] * 3 + [2, 0, 1, 2])
    got = MulticlassConfusionMatrix(3, ignore_index=IGNORE)(pred, truth)
    assert got.tolist() == cm.tolist()


@pytest.mark.parametrize("kind,name", [("vit", "vit_pico_patch8_64"), ("absvit", "absvit_pico_patch8_64"),
                                       ("resnet", "resnet10t"), ("vit", "vit_base_patch16_224"),
                                       ("absvit", "absvit_base_patch16_224")])
def test_logits_at_non_square_crops(kind, name):
    with pytest.warns(UserWarning, match="(?i)random init"):
        model = Segmenter(build_backbone(kind, name), 19, channels=32, aux_channels=16).train()
    for h, w in ((64, 128), (96, 64)):
        logits, aux = model(torch.randn(2, 3, h, w))
        assert logits.shape == aux.shape == (2, 19, h, w)
    model.eval()
    assert model.predict(torch.randn(1, 3, 50, 75), (100, 150)).shape == (1, 19, 100, 150)


def test_absvit_taps_are_pass_two_features():
    model = timm.create_model("absvit_pico_patch8_64", num_classes=0, dynamic_img_size=True)
    torch.nn.init.normal_(model.prompt, std=1.0)
    for dec in model.decoders:  # make the feedback matter
        torch.nn.init.normal_(dec.linear2.weight, std=0.2)
    backbone = ViTFeatures(model).eval()
    x = torch.randn(2, 3, 48, 80)
    taps = backbone(x)
    assert vit_taps(12) == [2, 5, 8, 11] and backbone.taps == [0, 1, 2, 3]
    assert [t.shape for t in taps] == [(2, 96, 6, 10)] * 4
    tokens = model.forward_features(x)[:, 1:]  # pass 2, after the final norm
    torch.testing.assert_close(taps[-1], tokens.reshape(2, 6, 10, 96).permute(0, 3, 1, 2))
    pass_one = timm.models.vision_transformer.VisionTransformer.forward_intermediates(
        model, x, indices=[3], output_fmt="NCHW", intermediates_only=True)[0]
    assert not torch.allclose(model.norm(pass_one.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), taps[-1])


def test_wrong_backbone_checkpoint_is_refused(tmp_path):
    vit = timm.create_model("vit_pico_patch8_64")
    torch.save({"model": vit.state_dict()}, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"9 missing keys \['decoders.0.linear.weight'.*; the file fits vit_pico_patch8_64 "
                       r"\(is it a absvit_pico_patch8_64 checkpoint\? a absvit backbone needs one\)"):
        build_backbone("absvit", "absvit_pico_patch8_64", checkpoint=tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="does not match model"):
        build_backbone("vit", "absvit_pico_patch8_64")


def test_resnet_loads_timm_imagenet_weights_from_a_file(tmp_path):
    source = timm.create_model("resnet10t")
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    backbone = build_backbone("resnet", "resnet10t", checkpoint=tmp_path / "resnet10t.pth")
    torch.testing.assert_close(backbone.resnet.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    torch.save(timm.create_model("vit_pico_patch8_64").state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match=r"vit.pth.*(?s:.*)not resnet10t weights"):
        build_backbone("resnet", "resnet10t", checkpoint=tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="missing.pth: no such file"):
        build_backbone("resnet", "resnet10t", checkpoint=tmp_path / "missing.pth")


def test_backbone_loads_pretraining_output_and_resizes_pos_embed(tmp_path):
    source = timm.create_model("absvit_pico_patch8_64", img_size=32)  # a 4x4 grid, the model's own is 8x8
    torch.save({"model": source.state_dict(), "classes": list("abcdefghij")}, tmp_path / "model.pth")
    backbone = build_backbone("absvit", "absvit_pico_patch8_64", checkpoint=tmp_path / "model.pth")
    assert backbone.vit.pos_embed.shape == (1, 65, 96)
    torch.testing.assert_close(backbone.vit.blocks[2].attn.qkv.weight, source.blocks[2].attn.qkv.weight)


def test_no_weight_decay_on_pos_embed_cls_token_prompt_and_norms():
    model = Segmenter(build_backbone("absvit", "absvit_pico_patch8_64", drop_path=0.0), 21, channels=16, aux_channels=8)
    decay, plain = model.param_groups(0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {"backbone.vit.pos_embed", "backbone.vit.cls_token", "backbone.vit.prompt", "backbone.vit.norm.weight",
            "backbone.vit.blocks.0.norm1.bias", "decode_head.fuse.1.weight"} <= plain_names
    assert "backbone.vit.blocks.0.attn.qkv.bias" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0


def test_iteration_sampler_resumes_the_same_stream():
    full = list(IterationSampler(10, 4, 6, seed=3))
    assert list(IterationSampler(10, 4, 6, start=2, seed=3)) == full[8:]
    assert sorted(i for i, _ in full[:10]) == list(range(10))  # the first epoch is a permutation
    ranks = [list(IterationSampler(10, 4, 6, seed=3, rank=r, world=2)) for r in (0, 1)]
    assert ranks[0][:2] + ranks[1][:2] == full[:4]


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    generate_segmentation(root, seed=0, per_split={"train": 24, "val": 4})
    return root


def _recipe(**kw):
    values = dict(iterations=24, batch_size=4, lr=1e-3, warmup_iters=2, crop_height=64, crop_width=64, scale_long=128,
                  scale_short=64, head_channels=32, aux_channels=16, checkpoint_every=4, workers=0, drop_path=0.1)
    return SegmentRecipe(**{**values, **kw})


def test_generated_sets_read_in_all_three_layouts(seg_data):
    for dataset, classes in (("voc", {0, 255}), ("cityscapes", {0}), ("ade20k", {0, 255})):
        train = SegmentationFolder(dataset, seg_data / dataset, "train")
        assert len(train) == 24 and len(SegmentationFolder(dataset, seg_data / dataset, "val")) == 4
        seen = set()
        for i in range(len(train)):
            seen |= set(train.load(i)[1].unique().tolist())
        assert classes < seen and len(seen - classes) >= 5  # background/ignore plus several shape classes
    again = seg_data.parent / "again"
    generate_segmentation(again, seed=0, per_split={"train": 24, "val": 4}, layouts=["cityscapes"])
    first = sorted((seg_data / "cityscapes").rglob("*.png"))
    assert [p.read_bytes() for p in first] == [(again / p.relative_to(seg_data)).read_bytes() for p in first]


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_and_writes_miou(seg_data, tmp_path):
    torch.manual_seed(0)
    result = segment("absvit", "absvit_pico_patch8_64", "voc", seg_data / "voc", tmp_path, _recipe(iterations=40, lr=2e-3),
                     track=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 20  # every second iteration
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses
    present = [v for v in result["iou"].values() if v is not None]  # mIoU: the mean over the classes that occur
    assert result["miou"] == pytest.approx(sum(present) / len(present)) and set(result["iou"]) >= {"background", "aeroplane"}
    assert json.loads((tmp_path / "result.json").read_text())["miou"] == result["miou"]


@pytest.mark.slow
def test_resume_ends_like_an_uninterrupted_run(seg_data, tmp_path):
    recipe = _recipe(iterations=10, checkpoint_every=3)
    whole = segment("vit", "vit_pico_patch8_64", "cityscapes", seg_data / "cityscapes", tmp_path / "whole", recipe, track=False)
    segment("vit", "vit_pico_patch8_64", "cityscapes", seg_data / "cityscapes", tmp_path / "cut", recipe, track=False,
            stop_after=7)  # killed after iteration 7: the checkpoint holds iteration 6
    resumed = segment("vit", "vit_pico_patch8_64", "cityscapes", seg_data / "cityscapes", tmp_path / "cut", recipe, track=False)
    assert resumed["miou"] == whole["miou"] and resumed["iou"] == whole["iou"]
    a, b = (torch.load(tmp_path / d / "checkpoint.pth", weights_only=True)["model"] for d in ("whole", "cut"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    strip = lambda d: [{k: v for k, v in json.loads(l).items() if k != "seconds"}  # noqa: E731
                       for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert strip("cut") == strip("whole")


def test_a_changed_setting_never_resumes_the_old_segmentation_run(seg_data, tmp_path):
    from absvit.errors import StaleCheckpoint

    segment("vit", "vit_pico_patch8_64", "voc", seg_data / "voc", tmp_path, _recipe(iterations=4), track=False, stop_after=4)
    with pytest.raises(StaleCheckpoint, match=r"recipe\.lr: checkpoint 0\.001 vs now 0\.002"):
        segment("vit", "vit_pico_patch8_64", "voc", seg_data / "voc", tmp_path, _recipe(iterations=4, lr=2e-3), track=False)
    result = segment("vit", "vit_pico_patch8_64", "voc", seg_data / "voc", tmp_path, _recipe(iterations=4, lr=2e-3),
                     track=False, fresh_on_change=True)
    assert len(list(tmp_path.glob("stale-*/checkpoint.pth"))) == 1 and "miou" in result
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert ckpt["arch"] == "vit_pico_patch8_64" and ckpt["classes"][:2] == ["background", "aeroplane"]
    assert ckpt["run"]["recipe"]["lr"] == 2e-3 and "workers" not in ckpt["run"]["recipe"]


def test_a_backbone_file_rewritten_at_the_same_path_starts_fresh(seg_data, tmp_path, pico_run, capsys):
    """A rerun of pretraining rewrites the backbone file a segmentation job started from: the job starts fresh."""
    import shutil

    backbone = tmp_path / "backbone.pth"
    shutil.copy(pico_run / "model.pth", backbone)
    out = tmp_path / "seg"
    recipe = _recipe(iterations=6, checkpoint_every=2)
    segment("absvit", None, "voc", seg_data / "voc", out, recipe, checkpoint=backbone, track=False, stop_after=3)
    shutil.copy(pico_run / "checkpoint.pth", backbone)  # the same model, other weights
    capsys.readouterr()
    segment("absvit", None, "voc", seg_data / "voc", out, recipe, checkpoint=backbone, track=False, fresh_on_change=True)
    said = capsys.readouterr().out
    assert "(inputs.checkpoint: checkpoint sha256:" in said and "resuming" not in said
    assert len(list(out.glob("stale-*/checkpoint.pth"))) == 1
