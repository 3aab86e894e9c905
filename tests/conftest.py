import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import absvit.models  # noqa: F401  (registers the models)
from tests.helpers import PAPER_CLASSES, official_checkpoint, tiny_recipe


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """A small embedded-default tree (all splits) shared by the data/pretrain/evaluate tests."""
    from absvit.data.synthetic import generate

    root = tmp_path_factory.mktemp("embedded")
    generate(root, seed=0, size=64, per_class={"train": 20, "val": 4, "imagenet-a": 2, "imagenet-r": 2, "imagenet-sketch": 2})
    return root


@pytest.fixture(scope="session")
def embedded_c(tmp_path_factory, embedded):
    """The 75-folder ImageNet-C tree of the ``embedded`` val split (one image per class and shard), in its own folder."""
    from absvit.data.corruptions import CORRUPTIONS, SEVERITIES
    from absvit.data.imagenet_c import make_shard

    root = tmp_path_factory.mktemp("embedded-c") / "imagenet-c"
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            make_shard(embedded / "val", root, c, s, resize=64, crop=64, per_class=1)
    return root


@pytest.fixture(scope="session")
def pico_run(tmp_path_factory, embedded):
    """One epoch of ``absvit_pico_patch8_64`` pretraining on ``embedded`` (toy recipe): its output folder."""
    from absvit.pretrain import pretrain

    out = tmp_path_factory.mktemp("pico-run")
    pretrain("absvit_pico_patch8_64", embedded, out, tiny_recipe(epochs=1), track=False)
    return out


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real SLURM cluster with accounting on this machine (tests/slurm_cluster.py).

    Skipped where the SLURM / MariaDB packages are absent; CI installs them and sets
    ABSVIT_REQUIRE_SLURM=1, which turns the skip into a failure.
    """
    import os

    from tests.slurm_cluster import SlurmCluster, missing_programs

    missing = missing_programs()
    if os.geteuid() != 0:
        missing.append("root (the daemons run as root)")
    if missing:
        if os.environ.get("ABSVIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"ABSVIT_REQUIRE_SLURM=1 but the test cluster cannot start: missing {missing}")
        pytest.skip(f"no SLURM test cluster: missing {missing} (apt-get install slurmctld slurmd slurm-client "
                    "munge slurmdbd mariadb-server)")
    # not under pytest's tmp folders: those are private to root, and MariaDB runs as `mysql`
    base = Path(tempfile.mkdtemp(prefix="absvit-slurm-"))
    base.chmod(0o755)
    cluster = SlurmCluster(base).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: one test's store (or stopped server)
    must not reach the next test's subprocesses."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _keep_classes(folder):
    for d in folder.iterdir():
        if d.name not in PAPER_CLASSES:
            shutil.rmtree(d)


@pytest.fixture(scope="session")
def paper_datasets(tmp_path_factory):
    """Small sets in every published layout the paper preset reads (ImageNet at 224 px, a 75-folder ImageNet-C, A/R/Sketch,
    VOC / Cityscapes / ADE20K, scenes with a manifest) and official-layout base-size checkpoints; 3 classes."""
    import csv

    import timm

    from absvit.data.corruptions import CORRUPTIONS, SEVERITIES
    from absvit.data.imagenet_c import make_shard
    from absvit.data.scenes import generate_scenes
    from absvit.data.synthetic import generate
    from absvit.data.synthetic_seg import generate_segmentation

    root = tmp_path_factory.mktemp("paper-data")
    generate(root / "imagenet", size=224, per_class={"train": 3, "val": 1})
    generate(root / "robustness", size=224, per_class={"imagenet-a": 1, "imagenet-r": 1, "imagenet-sketch": 1})
    for split in ("imagenet/train", "imagenet/val", "robustness/imagenet-a", "robustness/imagenet-r",
                  "robustness/imagenet-sketch"):
        _keep_classes(root / split)
    for c in CORRUPTIONS:  # ImageNet-C's images are 224x224 already
        for s in SEVERITIES:
            make_shard(root / "imagenet" / "val", root / "imagenet-c", c, s, resize=224, crop=224)
    generate_segmentation(root / "seg", per_split={"train": 2, "val": 1})
    generate_scenes(root / "scenes", count=3)
    manifest = root / "scenes" / "manifest.csv"  # a folder of scenes names objects of the model's classes
    rows = [r for r in csv.DictReader(manifest.open()) if int(r["class_index"]) < len(PAPER_CLASSES)]
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    for name in ("vit_base_patch16_224", "absvit_base_patch16_224"):  # the official release's layout
        official_checkpoint(ckpts / f"{name}.pth", timm.create_model(name), name)
    return root


@pytest.fixture(scope="session")
def roberta_folder(tmp_path_factory):
    """``helpers.make_roberta``: a toy RoBERTa folder in roberta-base's save_pretrained layout."""
    from tests.helpers import make_roberta

    return make_roberta(tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="session")
def tokenizer(roberta_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(roberta_folder, local_files_only=True)


@pytest.fixture(scope="session")
def vl_data(tmp_path_factory):
    """The embedded V&L data at toy size (VQAv2 and Flickr30k layouts, the Figure 5 manifest) and its text encoder."""
    from absvit.vl.embedded import build_text_encoder, generate_vl, vl_corpus

    root = tmp_path_factory.mktemp("vl")
    paths = generate_vl(root / "data", seed=0, size=64, counts={"train": 6, "val": 3, "test": 3})
    build_text_encoder(root / "text", vl_corpus(root / "data"), hidden=32, layers=1, heads=2)
    return {**paths, "text": root / "text"}


@pytest.fixture(scope="session")
def encoders(pico_run, embedded, tmp_path_factory):
    """The session's pico AbSViT run and a ViT of the same size (one epoch each): the V&L visual encoders."""
    from absvit.pretrain import pretrain

    vit = tmp_path_factory.mktemp("vit")
    pretrain("vit_pico_patch8_64", embedded, vit, tiny_recipe(epochs=1), track=False)
    return {"absvit": pico_run / "model.pth", "vit": vit / "model.pth"}
