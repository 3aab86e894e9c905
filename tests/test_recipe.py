"""Recipe values are checked when the recipe is made: one line naming the key, on the command line and at planning."""
import dataclasses

import pytest
import yaml

from absvit.cli import main
from absvit.errors import UsageError
from absvit.recipe import PretrainRecipe, SegmentRecipe, check_patch_multiple
from tests.helpers import ROOT, dry_run, workflow_copy


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    from absvit.data.synthetic import generate

    root = tmp_path_factory.mktemp("imagenet")
    generate(root, seed=0, size=64, per_class={"train": 2, "val": 1})
    return root


def _one_line_error(capsys, argv, verb: str, key: str) -> str:
    """The one-line error; a key's own problem is named where the key was set (``--set key``), the img_size that
    does not fit the model by the recipe's key."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    where = f"recipe.{key}" if key == "img_size" else f"--set {key}"
    assert err.startswith(f"absvit {verb}: error: {where}: "), err
    return err.strip()


@pytest.mark.parametrize("setting,message", [
    ("epochs=-1", "-1 is out of range; expected an int >= 1"),
    ("batch_size=0", "0 is out of range; expected an int >= 1"),
    ("drop_path=1.5", "1.5 is out of range; expected a float in [0, 1)"),
    ("img_size=33", "33 is not a multiple of absvit_pico_patch8_64's patch size 8; expected a multiple of 8 (e.g. 32 or 40)"),
    ("auto_augment=rand-zz", "'rand-zz' has an unknown section 'zz' (timm reads m, n, p, mstd, mmax, inc with a number)"),
    ("opt=adamm", "'adamm' is not an optimizer timm knows (did you mean 'adam'?)"),
    ("sched=cosin", "'cosin' is not a timm scheduler absvit pretrain runs (did you mean 'cosine'?)"),
    ("interpolation=random", "'random' is not an interpolation of timm's transforms"),
])
def test_pretrain_refuses_a_bad_value_before_training(capsys, tmp_path, imagenet, setting, message):
    out = tmp_path / "o"
    err = _one_line_error(capsys, ["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(imagenet), "--out", str(out),
                                   "--no-mlflow", "--set", "workers=0", setting], "pretrain", setting.split("=")[0])
    assert message in err, err
    assert not out.exists()  # refused before the output folder, let alone a checkpoint


def test_segment_refuses_a_bad_value_before_training(capsys, tmp_path):
    out = tmp_path / "o"
    err = _one_line_error(capsys, ["segment", "--backbone", "vit", "--model", "vit_pico_patch8_64", "--dataset", "voc",
                                   "--data", str(tmp_path / "voc"), "--out", str(out), "--no-mlflow", "--set",
                                   "iterations=0"], "segment", "iterations")
    assert err.endswith("--set iterations: 0 is out of range; expected an int >= 1"), err
    assert not out.exists()


@pytest.mark.parametrize("recipe,values,message", [
    (PretrainRecipe, {"ema_decay": 1}, "ema_decay: 1.0 is out of range; expected a float in (0, 1)"),
    (PretrainRecipe, {"crop_pct": 0}, "crop_pct: 0.0 is out of range; expected a float in (0, 1]"),
    (PretrainRecipe, {"reprob": 1.5}, "reprob: 1.5 is out of range; expected a float in [0, 1]"),
    (PretrainRecipe, {"lr": 0}, "lr: 0.0 is out of range; expected a float > 0"),
    (PretrainRecipe, {"auto_augment": "rand-m9x"}, "auto_augment: 'rand-m9x': section 'm9x' needs an int value"),
    (PretrainRecipe, {"auto_augment": "rand-tfoo"}, "auto_augment: 'rand-tfoo' has an unknown RandAugment transform set 'tfoo'"),
    (PretrainRecipe, {"auto_augment": "randaug-m9"}, "auto_augment: 'randaug-m9' has an unknown policy 'randaug'"),
    (PretrainRecipe, {"auto_augment": "v1"}, "auto_augment: 'v1' has an unknown policy 'v1'"),
    (SegmentRecipe, {"scale_short": 4096}, "scale_short: 4096 is out of range; expected an int in [1, scale_long] "
                                           "(scale_long is 2048)"),
    (SegmentRecipe, {"ratio_min": 3.0}, "ratio_min: 3.0 is out of range; expected a float in (0, ratio_max] (ratio_max is 2.0)"),
    (SegmentRecipe, {"ratio_max": -1}, "ratio_max: -1.0 is out of range; expected a float > 0"),  # its own range first
    (SegmentRecipe, {"beta2": 1}, "beta2: 1.0 is out of range; expected a float in [0, 1)"),
    (SegmentRecipe, {"warmup_ratio": 0}, "warmup_ratio: 0.0 is out of range; expected a float in (0, 1]"),
])
def test_from_dict_names_the_key_under_its_where(recipe, values, message):
    with pytest.raises(UsageError) as e:
        recipe.from_dict(values, where="presets.embedded.recipe")
    assert str(e.value).startswith(f"presets.embedded.recipe.{message}"), str(e.value)


def test_direct_construction_is_checked_too():
    with pytest.raises(UsageError, match=r"^recipe\.epochs: -1 is out of range; expected an int >= 1$"):
        PretrainRecipe(epochs=-1)
    with pytest.raises(UsageError, match=r"^recipe\.lr: expected float, got 'fast'$"):
        SegmentRecipe(lr="fast")


def test_every_key_has_a_check():
    from absvit.vl.recipe import VLRecipe

    for recipe in (PretrainRecipe, SegmentRecipe, VLRecipe):
        assert set(recipe.CHECKS) == {f.name for f in dataclasses.fields(recipe)}, recipe


def test_valid_recipes_still_construct():
    assert PretrainRecipe() == PretrainRecipe.from_dict({}) and SegmentRecipe() == SegmentRecipe.from_dict({})
    for values in ({"auto_augment": ""}, {"auto_augment": None}, {"auto_augment": "augmix-m5-w4-d2"},
                   {"auto_augment": "original-mstd0.5"}, {"auto_augment": "rand-m9-n3-mstd1-tweights"},
                   {"opt": "lookahead_AdamW"}, {"opt": "sgd", "sched": "step"}, {"drop_path": 0.0, "mixup": 0}):
        PretrainRecipe.from_dict(values)
    assert PretrainRecipe.from_dict({"auto_augment": None}).auto_augment == ""  # `auto_augment: null`: none
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for name, preset in config["presets"].items():
        if "recipe" not in preset:  # released files only: nothing trained
            assert not set(preset["runs"]) - set(preset["checkpoints"]) and "segmentation" not in preset, name
            continue
        PretrainRecipe.from_dict(preset["recipe"], where=f"presets.{name}.recipe")
        for dataset, d in preset["segmentation"]["datasets"].items():
            SegmentRecipe.from_dict({**preset["segmentation"]["recipe"], **d["recipe"]}, where=f"presets.{name}")
        for run in preset["runs"].values():
            check_patch_multiple(PretrainRecipe.from_dict(preset["recipe"]).img_size, run["model"])


def test_allowed_schedulers_and_interpolations_work_in_timm():
    """The choice tables' names are what timm's factories take, as absvit.pretrain calls them."""
    import torch
    from timm.data import create_transform
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    for sched in PretrainRecipe.SCHEDULERS:
        optimizer = create_optimizer_v2(torch.nn.Linear(2, 2), "adamw", lr=1e-3)
        scheduler, _ = create_scheduler_v2(optimizer, sched, num_epochs=1, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=1)
        scheduler.step(0), scheduler.step(1)
    for interpolation in PretrainRecipe.INTERPOLATIONS:
        for training in (True, False):
            create_transform(64, is_training=training, interpolation=interpolation, auto_augment=PretrainRecipe.auto_augment)


def test_patch_multiple_from_the_name():
    check_patch_multiple(224, "absvit_tiny_patch16_224")
    check_patch_multiple(33, "resnet10t")  # no patch<N> in the name: not checked
    with pytest.raises(UsageError, match=r"^cfg\.img_size: 4 is not a multiple of vit_pico_patch8_64's patch size 8; "
                                         r"expected a multiple of 8 \(e\.g\. 8\)$"):
        check_patch_multiple(4, "vit_pico_patch8_64", where="cfg")


def _refused_at_planning(tmp_path, edit, line: str):
    out = dry_run(cwd=workflow_copy(tmp_path, edit))
    assert out.returncode != 0
    assert line in out.stderr, out.stderr
    assert "Building DAG" not in out.stderr, out.stderr


def test_planning_refuses_an_out_of_range_pretraining_value(tmp_path):
    _refused_at_planning(tmp_path, lambda c: c["presets"]["embedded"]["recipe"].update(drop_path=1.5),
                         "config key presets.embedded.recipe.drop_path: 1.5 is out of range; expected a float in [0, 1)")


def test_planning_refuses_an_img_size_off_the_patch_grid(tmp_path):
    _refused_at_planning(tmp_path, lambda c: c["presets"]["embedded"]["recipe"].update(img_size=33),
                         "config key presets.embedded.recipe.img_size: 33 is not a multiple of absvit_pico_patch8_64_gap's "
                         "patch size 8")


def test_planning_refuses_an_out_of_range_segmentation_value(tmp_path):
    _refused_at_planning(
        tmp_path, lambda c: c["presets"]["embedded"]["segmentation"]["datasets"]["cityscapes"]["recipe"].update(iterations=0),
        "config key presets.embedded.segmentation.datasets.cityscapes.recipe.iterations: 0 is out of range; "
        "expected an int >= 1")


def test_optimizers_known_without_timm_are_timm_names():
    from timm.optim import list_optimizers

    from absvit.recipe import COMMON_OPTIMIZERS

    assert set(COMMON_OPTIMIZERS) <= set(list_optimizers())
    PretrainRecipe.from_dict({"opt": "adafactorbv"})  # not among them: timm's own list answers


def test_timm_builds_the_transform_where_it_is_loaded():
    from absvit.recipe import timm_refuses

    assert timm_refuses("rand-m9-mstd0.5-inc1", "rand") is None
    assert timm_refuses("randx-m9", "rand").startswith("AssertionError")  # what the parse refuses first


def test_checking_a_usual_recipe_does_not_import_timm():
    """At planning time: the DAG checks every recipe, and an import of timm (torch) would take seconds."""
    import subprocess
    import sys

    code = ("import sys, yaml; from absvit.recipe import PretrainRecipe, SegmentRecipe; "
            "p = yaml.safe_load(open('config.yaml'))['presets']['embedded']; "
            "PretrainRecipe.from_dict(p['recipe']); SegmentRecipe.from_dict(p['segmentation']['recipe']); "
            "print('timm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout
