import json

import pytest
import timm
import torch

from absvit.checkpoint import save_checkpoint
from absvit.data.corruptions import ALEXNET_ERR, CORRUPTIONS, SEVERITIES
from absvit.data.readers import SUBSET_SUITES, ClassFolder, DatasetError, label_space
from absvit.evaluate import Normalized, corruption_errors, evaluate, load_model, suite_transform


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


@pytest.fixture()
def trained(pico_run):
    return pico_run / "checkpoint.pth"


def _top1_image_by_image(checkpoint, suite: str, root) -> float:
    """The suite's top-1 by hand: one image at a time, the argmax over the classes the set holds."""
    model, classes, img_size, _ = load_model(checkpoint)
    model = Normalized(model)  # the suites' loaders give uint8 images, normalised on the device
    data = ClassFolder(root, classes, suite_transform(suite, img_size, 1.0, "bicubic"), subset=suite in SUBSET_SUITES)
    allowed, hits = torch.tensor(data.class_indices), 0
    with torch.no_grad():
        for image, label in (data[i] for i in range(len(data))):
            logits = model.eval()(image[None])[0]
            hits += int(allowed[logits[allowed].argmax()] == label)
    return 100.0 * hits / len(data)


def test_evaluate_writes_every_suite(tmp_path, embedded, embedded_c, trained):
    roots = {"clean": embedded / "val", "imagenet-c": embedded_c, "imagenet-a": embedded / "imagenet-a",
             "imagenet-r": embedded / "imagenet-r", "imagenet-sketch": embedded / "imagenet-sketch"}
    for suite in roots:  # (FGSM / PGD: tests/test_attacks.py)
        evaluate("absvit_pico_patch8_64", trained, suite, roots[suite], tmp_path / f"{suite}.json",
                 img_size=64, crop_pct=1.0, workers=0, batch_size=16, track=False)
        result = json.loads((tmp_path / f"{suite}.json").read_text())
        assert result["suite"] == suite
        if suite == "imagenet-c":  # mCE from the file's own 75 top-1 numbers; one shard's top-1 by hand
            assert set(result["top1"]) == set(CORRUPTIONS) and all(len(result["top1"][c]) == 5 for c in CORRUPTIONS)
            top1 = {(c, s): result["top1"][c][str(s)] for c in CORRUPTIONS for s in SEVERITIES}
            assert result["mce"] == pytest.approx(corruption_errors(top1)["mce"])
            assert result["top1"]["fog"]["3"] == pytest.approx(_top1_image_by_image(trained, suite, embedded_c / "fog" / "3"))
        else:
            assert result["top1"] == pytest.approx(_top1_image_by_image(trained, suite, roots[suite]))
            assert result["images"] == len(ClassFolder(roots[suite], label_space(str(embedded / "train")),
                                                       subset=suite in SUBSET_SUITES))
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
