"""What a user meets at the command line: one-line errors, self-describing checkpoints, readable files."""
import json
import os
import re
import stat

import pytest
import timm
import torch

from absvit.cli import main
from absvit.io import atomic_path, write_json


@pytest.fixture()
def pico(pico_run):
    """The final weights of the session's one-epoch pico pretraining (conftest ``pico_run``)."""
    return pico_run / "model.pth"


def _error(capsys, argv) -> str:
    """Runs a verb that must fail as a user error: exit status 2 and exactly one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("extra,message", [
    (["--set", "learning_rate=1"], r"error: --set learning_rate: unknown key; known keys are \[.*'lr', "),
    (["--set", "epoch=1"], r"error: --set epoch: unknown key \(did you mean 'epochs'\?\)"),  # not blamed on a file
    (["--set", "drop_path=1.5"], r"error: --set drop_path: 1.5 is out of range; expected a float in \[0, 1\)"),
    (["--set", "epochs"], "--set expects KEY=VALUE, got 'epochs'"),
    (["--set", "batch_size=1000"], r"recipe key batch_size: 1000 .* is larger than the training set .*train \(200 images\)"),
])
def test_user_errors_of_pretrain_are_one_line(capsys, tmp_path, embedded, extra, message):
    err = _error(capsys, ["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(embedded), "--out", str(tmp_path),
                          "--no-mlflow", "--set", "img_size=64", "workers=0", *extra])
    assert err.startswith("absvit pretrain: error: ")
    assert re.search(message, err), err


def test_unknown_model_names_the_closest(capsys, tmp_path, embedded):
    err = _error(capsys, ["pretrain", "--model", "absvit_pico_patch8_6", "--data", str(embedded), "--out", str(tmp_path),
                          "--no-mlflow"])
    assert err.startswith("absvit pretrain: error: unknown model 'absvit_pico_patch8_6' (did you mean 'absvit_pico_patch8_64'?)")


def test_evaluate_takes_model_size_and_classes_from_the_checkpoint(tmp_path, embedded, pico):
    assert main(["evaluate", "--checkpoint", str(pico), "--suite", "clean", "--data", str(embedded / "val"),
                 "--out", str(tmp_path / "r.json"), "--crop-pct", "1.0", "--workers", "0", "--no-mlflow"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["model"] == "absvit_pico_patch8_64" and result["img_size"] == 64 and result["classes"] == 10


def test_evaluate_runs_several_suites_with_one_model_each_to_its_file(capsys, tmp_path, embedded, pico):
    suites = ("clean", "imagenet-a", "imagenet-sketch")
    assert main(["evaluate", "--checkpoint", str(pico), "--suite", *suites,
                 "--data", *(str(embedded / s) for s in ("val", "imagenet-a", "imagenet-sketch")),
                 "--out", *(str(tmp_path / f"{s}.json") for s in suites), "--crop-pct", "1.0", "--workers", "0",
                 "--no-mlflow"]) == 0
    alone = tmp_path / "alone.json"
    assert main(["evaluate", "--checkpoint", str(pico), "--suite", "imagenet-a", "--data", str(embedded / "imagenet-a"),
                 "--out", str(alone), "--crop-pct", "1.0", "--workers", "0", "--no-mlflow"]) == 0
    results = {s: json.loads((tmp_path / f"{s}.json").read_text()) for s in suites}
    assert [r["suite"] for r in results.values()] == list(suites) and results["imagenet-a"]["data"].endswith("imagenet-a")
    assert results["imagenet-a"]["top1"] == json.loads(alone.read_text())["top1"]  # the same as evaluated alone
    assert results["clean"]["seed"] == 0  # the training seed the checkpoint records
    err = _error(capsys, ["evaluate", "--checkpoint", str(pico), "--suite", "clean", "imagenet-a", "--data", str(embedded),
                          "--out", str(tmp_path / "x.json"), "--no-mlflow"])
    assert "give one --data and one --out per --suite (got 2 suites, 1 --data, 1 --out)" in err


def test_flags_that_disagree_with_the_checkpoint_name_both(capsys, tmp_path, embedded, pico):
    base = ["evaluate", "--checkpoint", str(pico), "--suite", "clean", "--data", str(embedded / "val"),
            "--out", str(tmp_path / "r.json"), "--workers", "0", "--no-mlflow"]
    assert _error(capsys, [*base, "--img-size", "224"]) == (
        f"absvit evaluate: error: --img-size 224 disagrees with {pico}, which records 64; drop --img-size to use the checkpoint's")
    err = _error(capsys, [*base, "--model", "vit_pico_patch8_64"])
    assert "--model 'vit_pico_patch8_64' disagrees with" in err and "records 'absvit_pico_patch8_64'" in err
    err = _error(capsys, [*base, "--classes", "imagenet-1k"])
    assert "--classes (1000 classes: n01440764" in err and "records (10 classes: n90000001" in err
    assert not (tmp_path / "r.json").exists()


def test_a_file_that_does_not_fit_is_summarised_with_the_likely_model(capsys, tmp_path, embedded):
    torch.save({"model": timm.create_model("vit_nano_patch8_64").state_dict()}, tmp_path / "nano.pth")
    err = _error(capsys, ["evaluate", "--checkpoint", str(tmp_path / "nano.pth"), "--model", "absvit_pico_patch8_64",
                          "--img-size", "64", "--classes", str(embedded / "train"), "--suite", "clean",
                          "--data", str(embedded / "val"), "--out", str(tmp_path / "r.json"), "--no-mlflow"])
    assert len(err) < 1000, err  # was ~10 KB of key names
    assert "9 missing keys ['decoders.0.linear.weight'" in err and "+4 more" in err
    assert "unexpected keys" in err and "shape mismatches" in err and err.endswith("the file fits vit_nano_patch8_64")


def test_segment_takes_the_model_from_the_backbone_checkpoint(tmp_path, pico):
    from absvit.data.synthetic_seg import generate_segmentation

    generate_segmentation(tmp_path / "seg", per_split={"train": 4, "val": 1}, layouts=["ade20k"])
    assert main(["segment", "--backbone", "absvit", "--checkpoint", str(pico), "--dataset", "ade20k",
                 "--data", str(tmp_path / "seg" / "ade20k"), "--out", str(tmp_path / "out"), "--no-mlflow", "--set",
                 "iterations=1", "batch_size=2", "crop_height=64", "crop_width=64", "scale_long=128", "scale_short=64",
                 "head_channels=16", "aux_channels=8", "workers=0"]) == 0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["model"] == "absvit_pico_patch8_64"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "result.json", {"a": 1})
        with atomic_path(tmp_path / "model.pth") as tmp:
            torch.save({"x": torch.zeros(1)}, tmp)
    finally:
        os.umask(old)
    for name in ("result.json", "model.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_recipe_files_own_error_names_the_file(capsys, tmp_path, embedded):
    (tmp_path / "recipe.yaml").write_text("epochs: -2\n")
    err = _error(capsys, ["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(embedded), "--out",
                          str(tmp_path / "out"), "--no-mlflow", "--recipe", str(tmp_path / "recipe.yaml")])
    assert err.endswith(f"{tmp_path / 'recipe.yaml'}: epochs: -2 is out of range; expected an int >= 1")


def test_evaluate_says_what_a_file_is_when_it_is_not_a_classifier(capsys, tmp_path, embedded, pico):
    """Each file that is no ImageNet classifier checkpoint is one line saying what it is."""
    from absvit.checkpoint import read_checkpoint

    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("e\n")  # once `KeyError: 101`
    ckpt = read_checkpoint(pico)
    torch.save({k: v for k, v in ckpt.items() if k not in ("arch", "classes", "args")}["model"], tmp_path / "bare.pth")
    torch.save({**ckpt, "vl": {"task": "vqa"}, "arch": "meter-vqa/absvit_pico_patch8_64"}, tmp_path / "vl.pth")
    torch.save({**ckpt, "run": {"backbone": "absvit", "dataset": "voc"}, "img_size": (64, 64)}, tmp_path / "seg.pth")
    expected = {
        "empty.pth": "empty.pth: an empty file (0 bytes); expected a torch.save checkpoint",
        "text.pth": "text.pth: not a torch checkpoint (corrupt, or not written by torch.save: it starts with b'e\\n')",
        "vl.pth": "vl.pth: a checkpoint of `absvit vl-vqa` / `vl-retrieval` (a V&L model), not an ImageNet classifier",
        "seg.pth": "seg.pth: a checkpoint of `absvit segment` (a segmenter), not an ImageNet classifier",
        "bare.pth": "bare.pth: the checkpoint's head has 10 classes and the file records no label space, so ImageNet-1k's "
                    "1000 were assumed; give --classes",
    }
    for name, message in expected.items():
        extra = ["--model", "absvit_pico_patch8_64"] if name == "bare.pth" else ["--img-size", "64"]
        err = _error(capsys, ["evaluate", "--checkpoint", str(tmp_path / name), "--suite", "clean", "--data",
                              str(embedded / "val"), "--out", str(tmp_path / "out.json"), "--no-mlflow", *extra])
        assert message in err, err


def test_released_without_its_inputs_is_one_line(capsys, tmp_path):
    err = _error(capsys, ["released", "--out-dir", str(tmp_path), "--no-mlflow"])
    assert "give --eval RUN=EVAL_DIR ... (the `absvit evaluate` results of each released file) or --from-mlflow" in err


def test_a_job_under_gpu_check_writes_its_peak_gpu_memory_at_exit(tmp_path):
    """`make gpu-check` reads each job's peak from ABSVIT_PEAK_MEMORY_FILE: written at exit, failed jobs too (0 MiB here,
    where no CUDA memory was used)."""
    import subprocess
    import sys

    peak = tmp_path / "peak.txt"
    proc = subprocess.run([sys.executable, "-m", "absvit", "released", "--out-dir", str(tmp_path), "--no-mlflow"],
                          capture_output=True, text=True, env={**os.environ, "ABSVIT_PEAK_MEMORY_FILE": str(peak)})
    assert proc.returncode == 2, proc.stderr
    assert peak.read_text() == "0\n"
