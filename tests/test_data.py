import numpy as np
import pytest
import torch
from PIL import Image

from absvit.data.corruptions import CORRUPTIONS, GROUPS, SEVERITIES, corrupt
from absvit.data.imagenet_c import make_shard
from absvit.data.readers import ClassFolder, DatasetError, imagenet_c_folders, label_space
from absvit.data.synthetic import A_CLASSES, R_CLASSES, WNIDS, generate
from absvit.evaluate import accuracy
from tests.helpers import tree_digest


def test_generator_is_deterministic(tmp_path):
    counts = {"train": 2, "val": 1, "imagenet-r": 1}
    generate(tmp_path / "a", seed=3, per_class=counts)
    generate(tmp_path / "b", seed=3, per_class=counts)
    generate(tmp_path / "c", seed=4, per_class=counts)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_embedded_layout(embedded):
    assert label_space(str(embedded / "train")) == list(WNIDS)
    assert sorted(p.name for p in (embedded / "val").iterdir()) == list(WNIDS)
    assert sorted(p.name for p in (embedded / "imagenet-a").iterdir()) == [WNIDS[i] for i in A_CLASSES]
    assert sorted(p.name for p in (embedded / "imagenet-r").iterdir()) == [WNIDS[i] for i in R_CLASSES]
    image = Image.open(next((embedded / "train" / WNIDS[0]).glob("*.JPEG")))
    assert image.format == "JPEG" and image.size == (64, 64)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_every_corruption_every_severity(corruption):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for severity in SEVERITIES:
        out = corrupt(image, corruption, severity)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert not np.array_equal(out, image), (corruption, severity)


def test_corruption_arguments_are_checked():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown corruption 'speckle'"):
        corrupt(image, "speckle", 1)
    with pytest.raises(ValueError, match="severity must be 1-5"):
        corrupt(image, "fog", 6)


def test_imagenet_c_shard(tmp_path, embedded):
    shard = make_shard(embedded / "val", tmp_path / "c", "gaussian_noise", 3, resize=64, crop=64, per_class=2)
    assert shard == tmp_path / "c" / "gaussian_noise" / "3"
    assert sorted(p.name for p in shard.iterdir()) == list(WNIDS)
    assert all(len(list((shard / w).glob("*.JPEG"))) == 2 for w in WNIDS)
    assert [p.name for p in (tmp_path / "c" / "gaussian_noise").iterdir()] == ["3"]  # no temp folder left
    again = make_shard(embedded / "val", tmp_path / "again", "gaussian_noise", 3, resize=64, crop=64, per_class=2)
    assert tree_digest(shard) == tree_digest(again)


def _fake_c_tree(root, grouped: bool, skip=None):
    family = {c: g for g, cs in GROUPS.items() for c in cs}
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            if (c, s) != skip:
                (root / (f"{family[c]}/{c}" if grouped else c) / str(s) / WNIDS[0]).mkdir(parents=True)


@pytest.mark.parametrize("grouped", [False, True])
def test_imagenet_c_flat_and_grouped(tmp_path, grouped):
    _fake_c_tree(tmp_path, grouped)
    folders = imagenet_c_folders(tmp_path)
    assert len(folders) == 75 and folders[("fog", 2)].parts[-2:] == ("fog", "2")


def test_imagenet_c_missing_shard_is_named(tmp_path):
    _fake_c_tree(tmp_path, grouped=False, skip=("snow", 4))
    with pytest.raises(DatasetError, match=r"missing \['snow/4'\]"):
        imagenet_c_folders(tmp_path)


def test_bad_inputs_name_the_path(tmp_path, embedded):
    classes = label_space(str(embedded / "train"))
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nope'}: no such directory"):
        ClassFolder(tmp_path / "nope", classes)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.JPEG")
    with pytest.raises(DatasetError, match="no class folders inside"):
        ClassFolder(tmp_path / "flat", classes)
    (tmp_path / "empty" / WNIDS[0]).mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty' / WNIDS[0]}: empty class folder"):
        ClassFolder(tmp_path / "empty", classes, subset=True)
    (tmp_path / "alien" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "alien" / "n01440764" / "x.JPEG")
    with pytest.raises(DatasetError, match="class 'n01440764' is not in the label space of 10 classes"):
        ClassFolder(tmp_path / "alien", classes, subset=True)
    with pytest.raises(DatasetError, match="9 of the 10 classes are missing"):
        ClassFolder(_one_class(tmp_path, embedded), classes)
    (tmp_path / "broken" / WNIDS[0]).mkdir(parents=True)
    (tmp_path / "broken" / WNIDS[0] / "bad.JPEG").write_bytes(b"not a jpeg")
    data = ClassFolder(tmp_path / "broken", classes, subset=True)
    with pytest.raises(DatasetError, match="bad.JPEG: unreadable image"):
        data[0]


def _one_class(tmp_path, embedded):
    root = tmp_path / "one"
    (root / WNIDS[0]).mkdir(parents=True)
    src = next((embedded / "val" / WNIDS[0]).glob("*.JPEG"))
    (root / WNIDS[0] / src.name).write_bytes(src.read_bytes())
    return root


def test_imagenet_label_space_is_sorted_wnids():
    classes = label_space("imagenet-1k")
    assert len(classes) == 1000 and classes == sorted(classes) and classes[0] == "n01440764"


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_subset_restriction_maps_back_to_label_space(tmp_path):
    """5-class label space, a subset set holding classes 1 and 3 (like ImageNet-R's 200 of 1000)."""
    classes = [f"n0000000{i}" for i in range(5)]
    for i in (1, 3):
        (tmp_path / classes[i]).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / classes[i] / "x.JPEG")
    data = ClassFolder(tmp_path, classes, transform=lambda im: torch.zeros(3, 8, 8), subset=True)
    assert data.class_indices == [1, 3]
    # class 0 wins overall; among the subset {1, 3}, class 3 wins
    model = _FixedLogits([9.0, 1.0, 0.0, 2.0, 8.0])
    full = accuracy(model, data, restrict=None, batch_size=2, workers=0, device="cpu")
    restricted = accuracy(model, data, restrict=data.class_indices, batch_size=2, workers=0, device="cpu")
    assert full["top1"] == 0.0
    assert restricted["top1"] == 50.0 and restricted["top5"] == 100.0  # the class-3 image is right


def test_every_shard_is_reproducible(tmp_path, embedded):
    """Same seed, same bytes, for all 15 corruptions (impulse noise drew from skimage's unseeded generator)."""
    from absvit.data.corruptions import CORRUPTIONS
    from absvit.data.imagenet_c import make_shard

    for c in CORRUPTIONS:
        shards = [make_shard(embedded / "val", tmp_path / run, c, 2, resize=64, crop=64, per_class=1) for run in "ab"]
        files = sorted(shards[0].rglob("*.JPEG"))
        assert files and all(f.read_bytes() == (shards[1] / f.relative_to(shards[0])).read_bytes() for f in files), c
    other = make_shard(embedded / "val", tmp_path / "seed1", "impulse_noise", 2, resize=64, crop=64, per_class=1, seed=1)
    first = sorted((tmp_path / "a" / "impulse_noise" / "2").rglob("*.JPEG"))[0]
    assert first.read_bytes() != (other / first.relative_to(tmp_path / "a" / "impulse_noise" / "2")).read_bytes()
