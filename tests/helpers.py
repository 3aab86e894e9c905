"""What several test files share: the toy recipe, copies of the workflow with an edited config, dry runs, the paper
preset pointed at test data, the embedded preset at toy size, Snakemake benchmark files, official-layout checkpoint
files, a digest of a folder's files."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PAPER_CLASSES = ("n90000001", "n90000002", "n90000003")  # the label space of the paper-layout test sets: 3 classes
# A pretraining progress line of `pretrain_argv`'s run (absvit.progress): what a cluster log shows while it runs.
PROGRESS = re.compile(r"^Epoch: \[1/3\] \[\s*\d+/\d+\]  eta: \d+:\d\d:\d\d  lr: [\d.]+  loss: [\d.]+ \([\d.]+\)  "
                      r"img/s: \d+ \(\d+/proc\)  data: \d+%  time: [\d.]+$")
BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def pretrain_argv(data: Path, out: Path) -> list[str]:
    """An `absvit pretrain` command line of a few seconds, with a progress line every 0.2 s."""
    return ["pretrain", "--model", "absvit_pico_patch8_64", "--data", str(data), "--out", str(out), "--no-mlflow",
            "--log-every", "0.2", "--set", "epochs=3", "batch_size=16", "workers=0", "img_size=64", "crop_pct=1.0",
            "repeated_aug=false"]


def load_script(path: Path, name: str):
    """A script that is not a package module (``benchmarks/*.py``), imported from its file."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_recipe(**overrides):
    """The full recipe's code paths (mixup, RandAugment, erasing, repeated aug, EMA) at toy scale."""
    from absvit.recipe import PretrainRecipe

    values = dict(epochs=3, batch_size=32, lr=0.016, warmup_epochs=1, warmup_lr=1e-5, min_lr=1e-5, img_size=64,
                  crop_pct=1.0, workers=0, ema_decay=0.9, drop_path=0.1, mixup=0.8, cutmix=1.0, smoothing=0.1,
                  auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, repeated_aug=True, color_jitter=0.4)
    values.update(overrides)
    return PretrainRecipe(**values)


def workflow_copy(tmp_path: Path, edit=None) -> Path:
    """A copy of the workflow (Snakefile, rules, profiles, envs) in ``tmp_path`` whose config.yaml was changed by
    ``edit(config)``; returns ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "profiles", "envs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    if edit is not None:
        edit(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def toy_embedded(config, backbones=("vit", "absvit")) -> dict:
    """Shrink ``config``'s embedded preset to seconds per job: one seed, one epoch, 1 image per ImageNet-C shard,
    segmentation of ``backbones`` on VOC for 4 iterations, one V&L epoch. Returns the preset for further edits."""
    p = config["presets"]["embedded"]
    p["seeds"] = [0]
    p["data"]["make_imagenet_c"]["per_class"] = 1
    p["recipe"].update(epochs=1, batch_size=16, workers=0)
    p["evaluate"].update(workers=0, batch_size=64)
    seg = p["segmentation"]
    seg["generate"]["per_split"] = {"train": 8, "val": 2}
    seg["backbones"] = {name: seg["backbones"][name] for name in backbones}
    seg["datasets"] = {"voc": seg["datasets"]["voc"]}
    seg["recipe"].update(iterations=4, batch_size=4, checkpoint_every=2)
    p["vl"]["recipe"].update(epochs=1)
    return p


def tree_digest(root: Path) -> str:
    """SHA-256 of every file under ``root``: relative paths and bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def dry_run(*extra, cwd=ROOT) -> subprocess.CompletedProcess:
    """``snakemake all -n --forceall ...`` in ``cwd``; its stderr also holds its stdout (some errors go there)."""
    out = subprocess.run([SNAKEMAKE, "all", "-n", "--forceall", *extra], cwd=cwd, capture_output=True, text=True)
    out.stderr += out.stdout
    return out


def job_counts(stdout: str) -> dict[str, int]:
    """Snakemake's job-stats table of a dry run: rule -> number of jobs."""
    table = stdout.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def paper_config(config, root, *, small=True, vl=None):
    """The paper preset pointed at ``root`` (the ``paper_datasets`` layout); with ``small``, iteration counts,
    batches and crops cut to CPU size. ``vl``: the V&L keys to set (data, text_encoder, encoders' checkpoints, ...);
    without them the preset has no V&L stage (its base-size fine-tuning is no CPU test)."""
    paper = config["presets"]["paper"]
    if vl is None:
        del paper["vl"]
    else:
        paper["vl"].update(vl)
    paper["data"] = {"imagenet": str(root / "imagenet"), "imagenet_c": str(root / "imagenet-c"),
                     "imagenet_a": str(root / "robustness" / "imagenet-a"),
                     "imagenet_r": str(root / "robustness" / "imagenet-r"),
                     "imagenet_sketch": str(root / "robustness" / "imagenet-sketch")}
    seg = paper["segmentation"]
    for name in ("voc", "cityscapes", "ade20k"):
        seg["datasets"][name]["root"] = str(root / "seg" / name)
    paper["figures"]["scenes"] = str(root / "scenes")
    # the figures' GAP pair is the official release's ImageNet-1k files: at this scale (3 classes) the preset's own
    # pretraining runs draw the figures
    for run in ("absvit_tiny_gap", "vit_tiny_gap"):
        del paper["runs"][run], paper["checkpoints"][run]
    paper["figures"].update(absvit_run="absvit_tiny", vit_run="vit_tiny")
    for name in ("vit", "absvit"):
        seg["backbones"][name]["checkpoint"] = str(root / "checkpoints" / f"{seg['backbones'][name]['model']}.pth")
    if not small:
        return
    paper["recipe"].update(epochs=1, batch_size=8, workers=0)  # workers: a resource key (how, not what)
    paper["evaluate"].update(batch_size=32, workers=0)
    seg["recipe"].update(batch_size=2, workers=0, checkpoint_every=2)
    for d in seg["datasets"].values():
        d["recipe"].update(iterations=2, crop_height=64, crop_width=64, scale_long=128, scale_short=64)
    for r in paper["resources"].values():  # this machine: two cores, no GPU
        r.update(gpus_per_node=0, cpus_per_task=1, nodes=1, mem_gb=4)


def write_benchmark(path: Path, seconds: float, cpu_time: float | str = 0.5) -> None:
    """A Snakemake ``benchmark:`` file of one run that took ``seconds`` (``cpu_time`` "NA": never sampled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCHMARK_HEADER + f"{seconds}\t0:00:{int(seconds) % 60:02d}\t1\t1\t1\t1\t0\t0\t10\t{cpu_time}\n")


def official_checkpoint(path: Path, model: torch.nn.Module, name: str, *, input_size: int = 224, **extra) -> Path:
    """A file in the official release's layout: ``model`` plus the training ``args`` Namespace (and ``extra``)."""
    torch.save({"model": model.state_dict(), "epoch": 299, "args": argparse.Namespace(model=name, input_size=input_size),
                **extra}, path)
    return path


# -- the V&L model at toy size: a 2-layer RoBERTa (random init, fixtures `roberta_folder` / `tokenizer`), pico encoders

# The V&L recipe of the toy runs (`vl_data`, `encoders`): seconds per job
VL_RECIPE = dict(epochs=2, batch_size=8, accum_steps=1, lr=1e-4, hidden=32, heads=2, layers=1, img_size=64,
                 max_text_len=16, min_answer_count=1, negatives=2, eval_batch_size=64, workers=0)
SENTENCES = ["what colour is the ring?", "what shape is the red object?", "is there a star?", "how many objects?",
             "a red ring and a blue star.", "two green squares on a grey floor."]
HIDDEN = 32  # the fusion's width in these tests


def make_roberta(folder: Path) -> Path:
    """A 2-layer RoBERTa (random init) with a byte-level BPE trained on SENTENCES, saved by save_pretrained."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                     unk_token="<unk>", mask_token="<mask>", model_max_length=50)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=52, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    torch.manual_seed(0)
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def encode(tokenizer, texts):
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def visual(name, *, feedback=True, text_dim=24):
    """The encoder on a random-init (AbS)ViT whose feedback decoders are scaled up: at timm's init (std 0.02)
    their signal barely moves the tokens, as it does after pretraining."""
    import timm

    from absvit.vl.encoders import VisualEncoder

    torch.manual_seed(0)
    vit = timm.create_model(name)
    if hasattr(vit, "decoders"):
        with torch.no_grad():
            for decoder in vit.decoders:
                decoder.linear.weight.mul_(10)
                decoder.linear2.weight.mul_(10)
    return VisualEncoder(vit, text_dim=text_dim, feedback=feedback).eval()


def meter(roberta_folder, name, *, feedback=True):
    from absvit.vl.encoders import TextEncoder
    from absvit.vl.fusion import METER

    torch.manual_seed(0)
    return METER(visual(name, feedback=feedback), TextEncoder(roberta_folder), hidden=HIDDEN, heads=2, layers=2)


def images(n=2):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))
