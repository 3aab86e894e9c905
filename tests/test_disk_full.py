"""A full disk, on a real (tmpfs) file system: one clear line, nothing lost, and a rerun resumes."""
import os
import subprocess
from contextlib import contextmanager

import pytest
import torch
import yaml

from absvit.checkpoint import read_checkpoint
from absvit.cli import main
from absvit.errors import DiskFull
from absvit.io import atomic_path, save_torch, write_json
from tests.helpers import tiny_recipe

PICO_CHECKPOINT = 8_871_537  # bytes: absvit_pico_patch8_64's checkpoint.pth (with EMA, optimizer) after 1 tiny epoch
MiB = 2**20


@contextmanager
def tmpfs(folder, size: int):
    """A tmpfs of ``size`` bytes mounted at ``folder`` (root only); unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                         text=True)
    if run.returncode != 0:
        why = f"cannot mount a tmpfs (euid {os.geteuid()}): {run.stderr.strip() or run.returncode}"
        if os.environ.get("ABSVIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"ABSVIT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder, leave: int):
    """A filler file that leaves ``leave`` bytes free in ``folder``'s file system."""
    st = os.statvfs(folder)
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (st.f_bfree * st.f_frsize - leave))
    return filler


def test_pretraining_on_a_full_disk_says_so_keeps_the_last_checkpoint_and_resumes(tmp_path, embedded, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(epochs=2).to_dict()))
    argv = ["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(embedded), "--no-mlflow", "--recipe", str(recipe)]
    with tmpfs(tmp_path / "mnt", 64 * MiB) as mnt:
        out = mnt / "run"
        filler = fill(mnt, leave=PICO_CHECKPOINT * 3 // 2)  # room for epoch 1's checkpoint, not for epoch 2's beside it
        capsys.readouterr()
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        ckpt = out / "checkpoint.pth"
        size = ckpt.stat().st_size
        assert PICO_CHECKPOINT * 3 // 4 < size < PICO_CHECKPOINT * 3 // 2, f"re-measure PICO_CHECKPOINT (now {size})"
        assert len(err) == 1, err
        line = err[0]
        assert line.startswith(f"absvit pretrain: error: no space left on the device of {ckpt} (file system mounted "
                               f"at {mnt}): writing it needs "), line
        assert "the last good checkpoint (epoch 1) is kept at" in line and "the run resumes from it" in line, line
        needed = int(line.split("needs ")[1].split(" bytes")[0])
        assert abs(needed - size) < 4096  # epoch 2's checkpoint: as big as epoch 1's
        assert read_checkpoint(ckpt)["epoch"] == 1
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pth", "metrics.jsonl"]  # no temp file left

        filler.unlink()
        assert main([*argv, "--out", str(out)]) == 0
        assert "resuming absvit_pico_patch8_64 from" in capsys.readouterr().out
        assert read_checkpoint(out / "model.pth")["epoch"] == 2 and (out / "result.json").exists()
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_atomic_writes_into_a_full_disk_raise_disk_full_and_keep_the_old_file(tmp_path):
    with tmpfs(tmp_path / "mnt", 1 * MiB) as mnt:
        path = mnt / "result.json"
        write_json(path, {"old": True})
        before = path.read_bytes()
        fill(mnt, leave=0)
        with pytest.raises(DiskFull, match=rf"^no space left on the device of {path} \(file system mounted at {mnt}\): "
                                            r"writing it needs \d+ bytes \(0\.0 MiB\), 0 bytes \(0\.0 MiB\) free; "
                                            r"nothing was written") as e:
            write_json(path, {"new": list(range(1000))})
        assert e.value.errno == 28 and e.value.needed > 1000 and e.value.free == 0
        (mnt / "filler").unlink()
        fill(mnt, leave=64 * 1024)

        # no size known beforehand (a CSV, a figure written by a library): ENOSPC in the middle of the write
        with pytest.raises(DiskFull, match=r"writing it needs more than \d+ bytes .*, \d+ bytes \(0\.1 MiB\) free"):
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"x" * MiB)
        # torch.save straight into a file turns the short write into a RuntimeError ("unexpected pos ...")
        with pytest.raises(DiskFull, match=f"no space left on the device of {path}"):
            with atomic_path(path) as tmp:
                torch.save(torch.zeros(MiB // 4), tmp)
        with pytest.raises(DiskFull, match=r"needs \d+ bytes") as e:  # serialised in memory first: the exact size
            save_torch(path, torch.zeros(MiB // 4))
        assert MiB < e.value.needed < MiB + 8192
        with pytest.raises(ValueError, match="not a disk problem"):  # other errors pass through unchanged
            with atomic_path(path):
                raise ValueError("not a disk problem")
        assert path.read_bytes() == before
        assert sorted(p.name for p in mnt.iterdir()) == ["filler", "result.json"]  # no temp file left
