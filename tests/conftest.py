import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import absvit.models  # noqa: F401  (registers the models)


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


def tiny_recipe(**overrides):
    """The full recipe's code paths (mixup, RandAugment, erasing, repeated aug, EMA) at toy scale."""
    from absvit.recipe import PretrainRecipe

    values = dict(epochs=3, batch_size=32, lr=0.016, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-5, img_size=64,
                  crop_pct=1.0, workers=0, ema_decay=0.9, drop_path=0.1, mixup=0.8, cutmix=1.0, smoothing=0.1,
                  auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, repeated_aug=True, color_jitter=0.4)
    values.update(overrides)
    return PretrainRecipe(**values)


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
