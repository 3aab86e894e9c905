import json

import pytest
import timm
import torch

from absvit.checkpoint import save_checkpoint
from absvit.data.corruptions import ALEXNET_ERR, CORRUPTIONS, SEVERITIES
from absvit.data.imagenet_c import make_shard
from absvit.data.readers import DatasetError
from absvit.evaluate import SUITES, corruption_errors, evaluate
from absvit.pretrain import pretrain
from tests.conftest import tiny_recipe


def test_mce_matches_a_hand_computation():
    # severities 1..5 of every corruption at 90, 80, 70, 60, 50 % top-1 -> error 0.30 each;
    # contrast at 50 % everywhere -> error 0.50
    top1 = {(c, s): (50.0 if c == "contrast" else 100.0 - 10 * s) for c in CORRUPTIONS for s in SEVERITIES}
    out = corruption_errors(top1)
    assert out["error"]["fog"] == pytest.approx(30.0)
    assert out["ce"]["fog"] == pytest.approx(30.0 / 0.819324)
    assert out["ce"]["contrast"] == pytest.approx(50.0 / 0.853204)
    hand = (sum(0.30 / ALEXNET_ERR[c] for c in CORRUPTIONS if c != "contrast") + 0.50 / 0.853204) / 15 * 100
    assert out["mce"] == pytest.approx(hand)
    assert out["mean_error"] == pytest.approx((14 * 30.0 + 50.0) / 15)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedded):
    out = tmp_path_factory.mktemp("trained")
    pretrain("absvit_pico_patch8_64", embedded, out, tiny_recipe(epochs=1), track=False)
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            make_shard(embedded / "val", embedded / "imagenet-c", c, s, resize=64, crop=64, per_class=1)
    return out / "checkpoint.pth"


def test_evaluate_writes_every_suite(tmp_path, embedded, trained):
    roots = {"clean": embedded / "val", "imagenet-c": embedded / "imagenet-c", "imagenet-a": embedded / "imagenet-a",
             "imagenet-r": embedded / "imagenet-r", "imagenet-sketch": embedded / "imagenet-sketch"}
    for suite in SUITES:
        evaluate("absvit_pico_patch8_64", trained, suite, roots[suite], tmp_path / f"{suite}.json",
                 img_size=64, crop_pct=1.0, workers=0, batch_size=16, track=False)
        result = json.loads((tmp_path / f"{suite}.json").read_text())
        assert result["suite"] == suite
        if suite == "imagenet-c":
            assert set(result["top1"]) == set(CORRUPTIONS) and 0 < result["mce"] < 1000
            assert all(len(result["top1"][c]) == 5 for c in CORRUPTIONS)
        else:
            assert 0 <= result["top1"] <= 100 and result["images"] > 0
    assert json.loads((tmp_path / "imagenet-a.json").read_text())["classes"] == 6
    assert json.loads((tmp_path / "imagenet-sketch.json").read_text())["classes"] == 10
    evaluate("absvit_pico_patch8_64", trained, "clean", roots["clean"], tmp_path / "ema.json", ema=True,
             img_size=64, crop_pct=1.0, workers=0, track=False)
    assert json.loads((tmp_path / "ema.json").read_text())["ema"] is True


def test_head_that_does_not_match_the_classes_is_refused(tmp_path, embedded):
    model = timm.create_model("absvit_pico_patch8_64", num_classes=1000)
    save_checkpoint(tmp_path / "official.pth", model)  # official files record no class list
    with pytest.raises(DatasetError, match="head has 1000 classes but the label space .* has 10"):
        evaluate("absvit_pico_patch8_64", tmp_path / "official.pth", "clean", embedded / "val", tmp_path / "x.json",
                 classes_spec=str(embedded / "train"), img_size=64, workers=0, track=False)
    # with the ImageNet label space, the head fits and the embedded folders (not ImageNet wnids) are named
    with pytest.raises(DatasetError, match="class 'n90000001' is not in the label space of 1000 classes"):
        evaluate("absvit_pico_patch8_64", tmp_path / "official.pth", "clean", embedded / "val", tmp_path / "x.json",
                 img_size=64, workers=0, track=False)
    assert not (tmp_path / "x.json").exists()


def test_official_checkpoint_with_explicit_classes(tmp_path, embedded):
    model = timm.create_model("absvit_pico_patch8_64")
    torch.save({"model": model.state_dict(), "epoch": 299}, tmp_path / "official.pth")
    result = evaluate("absvit_pico_patch8_64", tmp_path / "official.pth", "imagenet-r", embedded / "imagenet-r",
                      tmp_path / "r.json", classes_spec=str(embedded / "train"), img_size=64, crop_pct=1.0, workers=0, track=False)
    assert result["classes"] == 6
