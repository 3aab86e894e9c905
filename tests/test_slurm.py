"""The pipeline on a real SLURM cluster (tests/slurm_cluster.py): Snakemake's slurm profile,
submitit jobs, accounting states, failures with their log, and requeue with exact resume."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from absvit.data.synthetic import generate
from absvit.data import SUITES
from absvit.data.synthetic_seg import generate_segmentation
from tests.helpers import PROGRESS, pretrain_argv, toy_embedded, workflow_copy

BIN = Path(sys.executable).parent
SMALL_JOB = {"threads": 1, "timeout_min": 10, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1}


def _env(cluster) -> dict:
    return {**cluster.env, "PATH": f"{BIN}:{cluster.env['PATH']}", "PYTHONUNBUFFERED": "1"}


def _slurm_workflow(tmp_path: Path, embedded: Path, embedded_c: Path) -> Path:
    """The repository's workflow with the embedded preset shrunk to seconds, on the session's data (copied in place
    of the data stage's outputs: the data stage is not under test here; test_workflow and the demo run it)."""
    def shrink(config):
        p = toy_embedded(config, backbones=("absvit",))  # one segmentation job: absvit on voc
        p["resources"] = {stage: dict(SMALL_JOB) for stage in p["resources"]}

    workflow_copy(tmp_path, shrink)
    (tmp_path / "slurm").symlink_to("profiles/slurm")
    data = tmp_path / "results" / "data" / "embedded"
    shutil.copytree(embedded, data)
    shutil.copytree(embedded_c, data / "imagenet-c")
    generate_segmentation(data / "segmentation", seed=0, per_split={"train": 8, "val": 2})
    return tmp_path


@pytest.mark.slow
def test_slurm_profile_runs_pretrain_evaluate_segment_tables(slurm_cluster, tmp_path, embedded, embedded_c):
    wd = _slurm_workflow(tmp_path, embedded, embedded_c)
    before = set(slurm_cluster.job_states())
    out = subprocess.run([BIN / "snakemake", "--profile", "slurm", "results/embedded/tables/table2.tex"], cwd=wd,
                         env=_env(slurm_cluster), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    # Pretraining (3 runs: Table 2's two arms and Table 3's ViT), evaluation (5 suites each, one job), segmentation (1)
    # and Table 4's V&L fine-tuning (2 tasks x 2 encoders) went to SLURM; the image data existed, the V&L data is made
    # on the login node (a local rule: seconds of CPU).
    assert "rule embedded_dataset" not in out.stdout and "rule imagenet_c" not in out.stdout
    assert "rule segmentation_dataset" not in out.stdout
    table = (wd / "results" / "embedded" / "tables" / "table2.tex").read_text()
    assert r"\toprule" in table and "Embedded default" in table
    expected = 3 + 3 + 1 + 4  # pretrain, evaluate (a job per run: every suite each), segment, vl
    deadline = time.monotonic() + 120  # accounting records trail the controller: wait for all of them, not the first
    while not (len(jobs := {j: s for j, s in slurm_cluster.job_states().items() if j not in before}) >= expected
               and set(jobs.values()) == {"COMPLETED"}):
        assert time.monotonic() < deadline, jobs
        time.sleep(0.5)
    assert len(jobs) == expected, jobs
    table1 = (wd / "results" / "embedded" / "tables" / "table1.tex").read_text()
    assert re.search(r"^absvit\\_pico\\_patch8\\_64\\_gap & \d+\.\d & -- & -- \\\\$", table1, re.M), table1
    logs = wd / "results" / "embedded" / "logs"
    for log in (logs / "pretrain" / "absvit-s0.log", logs / "pretrain" / "absvit_novar-s0.log",
                logs / "vl" / "vqa-absvit-s0.log", logs / "vl" / "retrieval-vit-s0.log"):
        assert "as slurm job" in log.read_text() and "Job completed successfully" in log.read_text(), log

    # Every MLflow run of the DAG carries the pipeline's tags; each evaluation names the pretraining run it read.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{wd / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("absvit-bench").experiment_id
    runs = client.search_runs([experiment])
    stages = sorted(f"{r.data.tags.get('absvit.stage')}/{r.data.tags.get('absvit.run')}" for r in runs)
    # pretrain, evaluate (a run per suite), segment, V&L (task x encoder), the comparisons, figures, Figure 5, cost
    assert len(runs) == 3 + 3 * len(SUITES) + 1 + 4 + 2 + 1 + 1 + 1, stages
    (bill,) = [r for r in runs if r.data.tags["absvit.stage"] == "cost"]  # priced by sacct: 11 jobs, 1 CPU each
    assert bill.data.metrics["cost.total.jobs"] >= 11 and bill.data.metrics["cost.pretrain.cpu_core_hours"] > 0
    assert "sacct" in (wd / "results" / "embedded" / "tables" / "report.md").read_text()
    assert len(client.search_runs([experiment], "tags.`absvit.preset` = 'embedded'")) == len(runs)
    pretrained = {r.data.tags["absvit.run"]: r.info.run_id for r in runs if r.data.tags["absvit.stage"] == "pretrain"}
    assert set(pretrained) == {"absvit", "absvit_novar", "vit"}
    for r in runs:
        stage, run = r.data.tags["absvit.stage"], r.data.tags["absvit.run"]
        if stage in ("evaluate", "segment", "vl-vqa", "vl-retrieval"):
            assert r.data.tags["absvit.source_run_id"] == pretrained[run], (stage, run)

    # A no-op rerun submits nothing.
    again = subprocess.run([BIN / "snakemake", "--profile", "slurm", "results/embedded/tables/table2.tex"], cwd=wd,
                           env=_env(slurm_cluster), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def _submit(cluster, folder: Path, *verb: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "absvit", "submit", "--launcher", "slurm", "--folder", str(folder),
           "--timeout-min", "10", "--cpus-per-task", "1", "--mem-gb", "1", "--", *verb]
    return subprocess.Popen(cmd, env=_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _job_id(proc: subprocess.Popen) -> str:
    for line in proc.stdout:
        if "as slurm job" in line:
            return line.split("as slurm job")[1].split(";")[0].strip()
    raise AssertionError(f"absvit submit exited ({proc.wait()}) without submitting")


def test_failed_job_fails_with_its_log(slurm_cluster, tmp_path):
    proc = _submit(slurm_cluster, tmp_path / "submitit", "pretrain", "--model", "absvit_pico_patch8_64",
                   "--data", str(tmp_path / "no-such-dataset"), "--out", str(tmp_path / "out"), "--no-mlflow")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, out
    job = out.split("as slurm job")[1].split(";")[0].strip()
    log = tmp_path / "submitit" / job / f"{job}_0_log.err"
    assert f"slurm job {job}" in out and f"see its log {log}" in out, out
    assert "no-such-dataset/train: no such directory" in log.read_text()
    assert not (tmp_path / "out" / "model.pth").exists()


def _pretrain_args(data: Path, out: Path) -> list[str]:
    return ["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(data), "--out", str(out), "--no-mlflow",
            "--set", "epochs=4", "batch_size=32", "workers=0", "warmup_epochs=1", "mixup=0.2", "reprob=0.2",
            "img_size=64", "crop_pct=1.0", "repeated_aug=false", "auto_augment=rand-m5-mstd0.5-inc1"]


@pytest.mark.slow
def test_interrupted_job_is_requeued_and_ends_like_an_uninterrupted_one(slurm_cluster, tmp_path):
    data = tmp_path / "data"
    generate(data, seed=1, size=64, per_class={"train": 40, "val": 4})
    reference = _submit(slurm_cluster, tmp_path / "sub-ref", *_pretrain_args(data, tmp_path / "ref"))
    proc = _submit(slurm_cluster, tmp_path / "sub", *_pretrain_args(data, tmp_path / "run"))
    job = _job_id(proc)

    # Preempt the job after its first epoch's checkpoint, as SLURM would (SIGTERM, then USR2).
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None, "first epoch never finished"
        time.sleep(0.1)
    slurm_cluster.run("scancel", job, "--signal", "SIGTERM")
    slurm_cluster.run("scancel", job, "--signal", "USR2")

    # submitit requeues it; SLURM holds a requeued job ~2 minutes, which a test need not wait.
    deadline = time.monotonic() + 120
    while slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%T").strip() != "PENDING":
        assert time.monotonic() < deadline, "the job was not requeued"
        time.sleep(0.2)
    slurm_cluster.run("scontrol", "update", f"jobid={job}", "StartTime=now")

    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    assert "resuming absvit_pico_patch8_64" in out, out
    deadline = time.monotonic() + 60  # accounting records trail the controller
    while (history := slurm_cluster.run("sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State").split())[-1:] != ["COMPLETED"]:
        assert time.monotonic() < deadline, history
        time.sleep(0.5)
    assert "REQUEUED" in history, history

    got, want = (torch.load(tmp_path / d / "model.pth", weights_only=True)["model"] for d in ("run", "ref"))
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "epoch_seconds"} for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(metrics) == strip(tmp_path / "ref" / "metrics.jsonl")
    assert len(strip(metrics)) == 4
    assert os.path.getsize(tmp_path / "run" / "result.json") > 0


def test_a_slurm_job_shows_progress_in_its_log_while_it_runs(slurm_cluster, tmp_path):
    generate(tmp_path / "data", seed=0, size=64, per_class={"train": 20, "val": 2})
    out = tmp_path / "out"
    proc = _submit(slurm_cluster, tmp_path / "submitit", *pretrain_argv(tmp_path / "data", out))
    job = _job_id(proc)
    job_log = tmp_path / "submitit" / job / f"{job}_0_log.out"
    for line in proc.stdout:  # `absvit submit` streams the job's output while it waits
        if PROGRESS.match(line.rstrip("\n")):
            assert not (out / "result.json").exists()  # the job is still running
            assert line in job_log.read_text()  # and the SLURM job's own log has it already
            break
    else:
        raise AssertionError(f"no progress line before the job ended ({proc.wait()})")
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, rest
    assert "Epoch: [3/3] done in " in rest and (out / "result.json").exists()


def test_two_tasks_on_slurm_pretrain_and_fine_tune(slurm_cluster, tmp_path):
    """ntasks=2 through sbatch/srun: torch.distributed (gloo) from SLURM's environment, for both training verbs."""
    generate(tmp_path / "data", seed=0, size=64, per_class={"train": 8, "val": 2})
    generate_segmentation(tmp_path / "seg", seed=0, per_split={"train": 8, "val": 2}, layouts=["voc"])
    submit = [sys.executable, "-m", "absvit", "submit", "--launcher", "slurm", "--timeout-min", "10",
              "--tasks-per-node", "2", "--cpus-per-task", "1", "--mem-gb", "1"]
    pretrain = [*submit, "--folder", str(tmp_path / "s1"), "--", "pretrain", "--model", "absvit_pico_patch8_64",
                "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pre"), "--no-mlflow", "--set", "epochs=1",
                "batch_size=16", "workers=0", "img_size=64", "crop_pct=1.0", "repeated_aug=false"]
    out = subprocess.run(pretrain, env=_env(slurm_cluster), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert torch.load(tmp_path / "pre" / "model.pth", weights_only=True)["run"]["world_size"] == 2
    segment = [*submit, "--folder", str(tmp_path / "s2"), "--", "segment", "--backbone", "absvit",
               "--checkpoint", str(tmp_path / "pre" / "model.pth"), "--dataset", "voc", "--data", str(tmp_path / "seg" / "voc"),
               "--out", str(tmp_path / "seg-out"), "--no-mlflow", "--set", "iterations=2", "batch_size=4", "crop_height=64",
               "crop_width=64", "scale_long=128", "scale_short=64", "head_channels=16", "aux_channels=8", "workers=0"]
    out = subprocess.run(segment, env=_env(slurm_cluster), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads((tmp_path / "seg-out" / "result.json").read_text())["model"] == "absvit_pico_patch8_64"
    assert torch.load(tmp_path / "seg-out" / "checkpoint.pth", weights_only=True)["run"]["world_size"] == 2
