"""Jobs you can watch: progress lines while a verb runs, streamed through `absvit submit` into the rule's log."""
import re
import subprocess
import sys
from pathlib import Path

from absvit.cli import main
from absvit.progress import Progress
from tests.helpers import PROGRESS, pretrain_argv

def watch(cmd: list[str], out: Path, env=None) -> list[str]:
    """Reads the command's output line by line as it comes; returns the lines seen before the run finished
    (before its result.json exists), after checking that the command succeeded."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    early = []
    for line in proc.stdout:
        if not (out / "result.json").exists():
            early.append(line.rstrip("\n"))
    assert proc.wait(timeout=600) == 0, "\n".join(early)
    return early


def test_a_local_job_streams_its_progress_into_the_callers_log(tmp_path, embedded):
    cmd = [sys.executable, "-m", "absvit", "submit", "--launcher", "local", "--folder", str(tmp_path / "submitit"),
           "--cpus-per-task", "2", "--", *pretrain_argv(embedded, tmp_path / "out")]
    early = watch(cmd, tmp_path / "out")
    assert any(PROGRESS.match(line) for line in early), "\n".join(early)
    assert any(line.startswith("Epoch: [1/3] done in ") and "val top-1 " in line for line in early), "\n".join(early)
    assert not any("\r" in line for line in early)


def test_a_failed_job_ends_its_log_with_the_failure(tmp_path, capsys):
    status = main(["submit", "--launcher", "local", "--folder", str(tmp_path / "submitit"), "--", "pretrain",
                   "--model", "absvit_pico_patch8_64", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert status == 2
    assert "completed successfully" not in out + err
    assert "none/train: no such directory" in out  # the job's own error, streamed
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"absvit submit: error: local job \d+ \(pretrain .*\) failed: absvit pretrain exited with status 2; "
                        r"see its log .*_log\.err", last), err


def test_lines_come_about_every_few_seconds_and_at_the_end(capsys, monkeypatch):
    now = [0.0]
    monkeypatch.setattr("absvit.progress.time.perf_counter", lambda: now[0])
    progress = Progress("Epoch: [1/1]", 100, every_s=10)
    for _ in range(100):
        now[0] += 1.0  # each step takes a second
        progress.step(images=8, data=0.5, loss=1.0, lr=0.1)
    lines = capsys.readouterr().out.splitlines()
    steps = [int(re.search(r"\[\s*(\d+)/100\]", line)[1]) for line in lines]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100], lines
    assert "eta: 0:00:10" in lines[-2] and "img/s: 8 (8/proc)" in lines[-1] and "data: 50%" in lines[-1]
