"""The multi-process path the cluster uses (one task per GPU, DDP), run on CPU: two submitit tasks, gloo."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from absvit.data.synthetic_seg import generate_segmentation

RECIPE = ["epochs=3", "batch_size=32", "workers=0", "img_size=64", "crop_pct=1.0", "repeated_aug=false", "mixup=0.0",
          "cutmix=0.0", "reprob=0.0", "auto_augment=\"\"", "drop_path=0.0", "lr=0.016", "warmup_epochs=1"]


def _pretrain(folder, data, out, tasks: int, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "absvit", "submit", "--launcher", "local", "--folder", str(folder), "--tasks-per-node",
           str(tasks), "--cpus-per-task", "1", "--", "pretrain", "--model", "absvit_pico_patch8_64", "--data", str(data),
           "--out", str(out), *extra, "--set", *RECIPE]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_resume_and_match_one(tmp_path, embedded):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    whole = _pretrain(tmp_path / "s1", embedded, tmp_path / "whole", 2, "--tracking-uri", uri)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    log = whole.stdout.read()
    assert "img/s" in log and "/proc)" in log

    # only rank 0 writes: one metrics row per epoch, one MLflow run; the checkpoint records the world size
    assert [r["epoch"] for r in _rows(tmp_path / "whole")] == [1, 2, 3]
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("absvit-bench").experiment_id])) == 1
    assert torch.load(tmp_path / "whole" / "model.pth", weights_only=True)["run"]["world_size"] == 2

    # killed after its first epoch, then resumed: it ends where the uninterrupted run ended
    cut = _pretrain(tmp_path / "s2", embedded, tmp_path / "cut", 2, "--no-mlflow")
    deadline = time.monotonic() + 300
    while not ((tmp_path / "cut" / "metrics.jsonl").exists() and _rows(tmp_path / "cut")):
        assert time.monotonic() < deadline and cut.poll() is None
        time.sleep(0.05)
    os.killpg(cut.pid, signal.SIGKILL)
    cut.wait()
    assert not (tmp_path / "cut" / "model.pth").exists()
    resumed = _pretrain(tmp_path / "s3", embedded, tmp_path / "cut", 2, "--no-mlflow")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "resuming absvit_pico_patch8_64" in out, out
    a, b = (torch.load(tmp_path / d / "model.pth", weights_only=True)["model"] for d in ("whole", "cut"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

    # the same global batch in one process: the same recipe, other shards of the data; losses agree to 0.1
    one = _pretrain(tmp_path / "s4", embedded, tmp_path / "one", 1, "--no-mlflow")
    assert one.wait(timeout=600) == 0, one.stdout.read()
    for two_procs, one_proc in zip(_rows(tmp_path / "whole"), _rows(tmp_path / "one")):
        assert abs(two_procs["train_loss"] - one_proc["train_loss"]) < 0.1, (two_procs, one_proc)


@pytest.mark.slow
def test_two_processes_fine_tune_segmentation(tmp_path):
    generate_segmentation(tmp_path / "seg", per_split={"train": 8, "val": 2}, layouts=["voc"])
    cmd = [sys.executable, "-m", "absvit", "submit", "--launcher", "local", "--folder", str(tmp_path / "s"),
           "--tasks-per-node", "2", "--cpus-per-task", "1", "--", "segment", "--backbone", "absvit", "--model",
           "absvit_pico_patch8_64", "--dataset", "voc", "--data", str(tmp_path / "seg" / "voc"), "--out",
           str(tmp_path / "out"), "--no-mlflow", "--set", "iterations=4", "batch_size=4", "crop_height=64",
           "crop_width=64", "scale_long=128", "scale_short=64", "head_channels=16", "aux_channels=8", "workers=0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    present = [v for v in result["iou"].values() if v is not None]  # mIoU: the mean over the classes that occur
    assert result["miou"] == pytest.approx(sum(present) / len(present)) and result["val_images"] == 2
    assert torch.load(tmp_path / "out" / "checkpoint.pth", weights_only=True)["run"]["world_size"] == 2
