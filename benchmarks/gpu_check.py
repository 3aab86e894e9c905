"""`make gpu-check`: every verb that touches a model, on CUDA, on generated toy data, through the code the DAG runs.

    make gpu-check               # = python benchmarks/gpu_check.py: the verbs on the GPU (one CUDA device)
    make gpu-check DEVICE=cpu    # the same checks on CPU (the test suite runs this form, so the script never rots)

Each check runs the verb as the DAG does (``python -m absvit <verb> ...`` in a child process, files only, no MLflow,
no SLURM) and checks what it wrote:

- ``pretrain``: timm's prefetcher on CUDA, ``compile: auto``, EMA, mixup / CutMix, random erasing; a job killed
  (SIGKILL) after its first epoch and resumed ends where the uninterrupted one does (bit for bit on CPU; within
  ``RESUME_ATOL`` of the weights on CUDA, where bf16 kernels need not be deterministic);
- ``evaluate``: all seven suites of one checkpoint, and on CUDA the same job again on CPU: top-1 within
  ``TOP1_TOL`` points per suite (bf16 autocast against fp32; FGSM / PGD follow the sign of a gradient, so near-ties
  flip a few more predictions: ``ATTACK_TOL``); FGSM and PGD on the device move no pixel by more than eps;
- ``segment``, ``decoder`` + ``figures``, ``vl-vqa``, ``vl-retrieval``, ``vl-figure``, and ``released`` on an
  official-layout file the check writes;
- with two or more GPUs, ``pretrain`` on two processes (DDP, NCCL).

It prints one table (check, passed / FAILED, seconds, peak GPU memory) and writes it to ``<out>/gpu_check.json``;
the exit status is 1 when a check failed. Run it first on a new cluster, before the first ``--profile slurm``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOP1_TOL = 2.0  # points of top-1 between bf16 (CUDA) and fp32 (CPU) on the same images: a few flipped argmaxes
ATTACK_TOL = 5.0  # FGSM / PGD: the perturbation is the sign of a gradient through bf16 activations: near-ties flip
RESUME_ATOL = 1e-2  # CUDA: a resumed run's weights against the uninterrupted run's
TIMEOUT_S = 600
PICO = "absvit_pico_patch8_64"
RECIPE = ["epochs=2", "batch_size=16", "workers=1", "img_size=64", "crop_pct=1.0", "warmup_epochs=1",
          "mixup=0.8", "cutmix=1.0", "reprob=0.25", "model_ema=true", "ema_decay=0.9", "compile=auto"]
SUITE_DATA = {"clean": "val", "imagenet-c": "imagenet-c", "imagenet-a": "imagenet-a", "imagenet-r": "imagenet-r",
              "imagenet-sketch": "imagenet-sketch", "fgsm": "val", "pgd": "val"}  # suite -> its folder of the toy data
VL_RECIPE = {"epochs": 1, "batch_size": 8, "accum_steps": 2, "lr": 1e-4, "hidden": 32, "heads": 2, "layers": 1,
             "img_size": 64, "max_text_len": 16, "min_answer_count": 1, "negatives": 2, "eval_batch_size": 32,
             "workers": 0}


def headline(suite: str, result: dict) -> float:
    """A suite's top-1 (ImageNet-C: the mean over its 75 folders)."""
    return result["mean_top1"] if suite == "imagenet-c" else result["top1"]


def attack_reach(checkpoint: Path, images: Path, device: str) -> dict[str, float]:
    """attack -> the largest |adversarial - clean| pixel (in [0, 1] units) over 16 val images, / the attack's eps:
    FGSM and PGD run by ``absvit.attacks.perturb`` on ``device`` as ``absvit evaluate`` runs them."""
    import torch
    from PIL import Image

    from absvit.attacks import ATTACKS, perturb
    from absvit.evaluate import Normalized, load_model, suite_transform

    model, _, img_size, _ = load_model(checkpoint)
    cfg = model.pretrained_cfg
    model = Normalized(model.eval(), cfg["mean"], cfg["std"]).to(device)
    tf = suite_transform("clean", img_size, 1.0, "bicubic")
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:16]
    batch = torch.stack([tf(Image.open(f).convert("RGB")) for f in files]).to(device)
    clean = model.normalize(batch)
    labels = model(batch).argmax(1)
    std = torch.tensor(cfg["std"], device=device).view(1, -1, 1, 1)
    moved = {}
    for name, attack in ATTACKS.items():
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device == "cuda"):
            adversarial = perturb(model.model, clean, labels, attack, mean=cfg["mean"], std=cfg["std"],
                                  generator=generator)
        moved[name] = float(((adversarial - clean) * std).abs().max()) / attack.epsilon
    return moved


class Check:
    """One row of the table: a named check, run as child processes in ``work``, on ``env``."""

    def __init__(self, work: Path, env: dict):
        self.work, self.env, self.rows = work, env, []

    def verb(self, *argv, env=None, log=None) -> subprocess.CompletedProcess:
        peak = self.work / "peak.txt"
        peak.unlink(missing_ok=True)
        out = subprocess.run([sys.executable, "-m", "absvit", *map(str, argv)], cwd=ROOT, capture_output=True,
                             text=True, timeout=TIMEOUT_S, env={**(env or self.env), "ABSVIT_PEAK_MEMORY_FILE": str(peak)})
        if log:
            (self.work / f"{log}.log").write_text(out.stdout + out.stderr)
        if out.returncode:
            raise AssertionError(f"absvit {argv[0]} exited {out.returncode}: {(out.stderr or out.stdout).strip()[-600:]}")
        self.peaks.append(float(peak.read_text()) if peak.exists() else 0.0)
        return out

    def run(self, name: str, fn) -> None:
        self.peaks, t0 = [], time.perf_counter()
        try:
            note = fn(self) or ""
            ok = True
        except Exception as e:  # noqa: BLE001  (every failure is a row of the table, and the next check runs)
            ok, note = False, f"{type(e).__name__}: {e}"
        row = {"check": name, "passed": ok, "seconds": round(time.perf_counter() - t0, 1),
               "peak_gpu_mib": round(max(self.peaks, default=0.0)), "note": note}
        self.rows.append(row)
        print(f"{name:<16} {'passed' if ok else 'FAILED':<7} {row['seconds']:7.1f} s  {row['peak_gpu_mib']:6d} MiB  {note}",
              flush=True)


def make_data(root: Path) -> dict:
    """The toy datasets of every stage, generated in process (as the embedded DAG's data jobs make them)."""
    from absvit.data.corruptions import CORRUPTIONS, SEVERITIES
    from absvit.data.imagenet_c import make_shard
    from absvit.data.scenes import generate_scenes
    from absvit.data.synthetic import generate
    from absvit.data.synthetic_seg import generate_segmentation
    from absvit.vl.embedded import build_text_encoder, generate_vl, vl_corpus

    generate(root / "data", seed=0, size=64, per_class={"train": 16, "val": 2, "imagenet-a": 1, "imagenet-r": 1,
                                                        "imagenet-sketch": 1})
    for c in CORRUPTIONS:
        for s in SEVERITIES:
            make_shard(root / "data" / "val", root / "data" / "imagenet-c", c, s, resize=64, crop=64, per_class=1)
    generate_segmentation(root / "seg", seed=0, per_split={"train": 8, "val": 2})
    scenes = generate_scenes(root / "scenes", seed=0, count=4, size=64)
    vl = generate_vl(root / "vl", seed=0, size=64, counts={"train": 4, "val": 2, "test": 2})
    build_text_encoder(root / "text", vl_corpus(root / "vl"), hidden=32, layers=1, heads=2)
    return {"data": root / "data", "seg": root / "seg", "scenes": scenes.parent, "vl": vl, "text": root / "text"}


def weights(path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def checks(d: dict, *, device: str, gpus: int) -> list:
    """(name, fn) of every check; each fn raises AssertionError with what went wrong, or returns a note."""
    w = d["work"]
    cpu_env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    def pretrain(c: Check) -> str:
        args = ["pretrain", "--model", PICO, "--data", d["data"], "--no-mlflow", "--log-every", "5", "--set", *RECIPE]
        c.verb(*args, "--out", w / "whole", log="pretrain")
        cut = subprocess.Popen([sys.executable, "-m", "absvit", *map(str, args), "--out", str(w / "cut")], cwd=ROOT,
                               env=c.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + TIMEOUT_S
        while not ((w / "cut" / "metrics.jsonl").exists() and (w / "cut" / "metrics.jsonl").read_text().strip()):
            if cut.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the job to kill ended before its first epoch's checkpoint")
            time.sleep(0.05)
        os.killpg(cut.pid, signal.SIGKILL)
        cut.wait()
        out = c.verb(*args, "--out", w / "cut", log="pretrain-resumed")
        assert "resuming" in out.stdout, "the killed job did not resume"
        a, b = weights(w / "whole" / "model.pth"), weights(w / "cut" / "model.pth")
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert worst <= (0.0 if device == "cpu" else RESUME_ATOL), f"resumed weights differ by {worst:g}"
        return f"killed after epoch 1 and resumed: weights within {worst:.1e} of the uninterrupted run's"

    def run_suites(c: Check, checkpoint, out, *extra, env=None) -> dict:
        """All seven suites of ``checkpoint`` in one job, as the DAG's evaluate does; suite -> its result."""
        c.verb("evaluate", "--checkpoint", checkpoint, *extra, "--suite", *SUITE_DATA, "--data",
               *(d["data"] / folder for folder in SUITE_DATA.values()), "--out", *(out / f"{s}.json" for s in SUITE_DATA),
               "--workers", "1", "--no-mlflow", env=env, log=f"evaluate-{out.name}")
        return {s: json.loads((out / f"{s}.json").read_text()) for s in SUITE_DATA}

    def evaluate(c: Check) -> str:
        here = run_suites(c, w / "whole" / "model.pth", w / "eval")
        moved = attack_reach(w / "whole" / "model.pth", d["data"] / "val", device)
        assert max(moved.values()) <= 1 + 1e-5, f"an attack moved a pixel beyond eps: {moved} (x eps)"
        reach = ", ".join(f"{a} {m:.3f}" for a, m in moved.items())
        if device == "cpu":
            return f"7 suites ({', '.join(f'{s} {headline(s, r):.1f}' for s, r in here.items())}); largest move x eps: {reach}"
        ref = run_suites(c, w / "whole" / "model.pth", w / "eval-cpu", env=cpu_env)
        gaps = {s: abs(headline(s, here[s]) - headline(s, ref[s])) for s in SUITE_DATA}
        bad = {s: g for s, g in gaps.items() if g > (ATTACK_TOL if s in ("fgsm", "pgd") else TOP1_TOL)}
        assert not bad, f"top-1 on CUDA vs CPU differs beyond tolerance: {bad}"
        return (f"CUDA vs CPU top-1 within {max(gaps.values()):.1f} points (tolerance {TOP1_TOL}, attacks "
                f"{ATTACK_TOL}); largest move x eps: {reach}")

    def segment(c: Check) -> str:
        c.verb("segment", "--backbone", "absvit", "--checkpoint", w / "whole" / "model.pth", "--dataset", "voc",
               "--data", d["seg"] / "voc", "--out", w / "seg", "--no-mlflow", "--set", "iterations=4", "batch_size=4",
               "crop_height=64", "crop_width=64", "scale_long=128", "scale_short=64", "warmup_iters=2",
               "head_channels=32", "aux_channels=16", "workers=0", log="segment")
        return f"mIoU {json.loads((w / 'seg' / 'result.json').read_text())['miou']:.1f}"

    def figures(c: Check) -> str:
        vit = w / "vit"
        c.verb("pretrain", "--model", "vit_pico_patch8_64", "--data", d["data"], "--out", vit, "--no-mlflow",
               "--set", *RECIPE, "epochs=1", log="pretrain-vit")
        c.verb("decoder", "--checkpoint", w / "whole" / "model.pth", "--data", d["data"] / "train", "--out",
               w / "decoder.pth", "--max-images", "32", log="decoder")
        c.verb("figures", "--absvit-checkpoint", w / "whole" / "model.pth", "--vit-checkpoint", vit / "model.pth",
               "--decoder", w / "decoder.pth", "--scenes", d["scenes"], "--out-dir", w / "figures", "--alphas", "1",
               "40", "--show", "2", "--no-mlflow", log="figures")
        assert (w / "figures" / "fig1_attention.pdf").exists()
        return "Figs. 1, 3, 4 and their scores"

    def vl(task):
        def fn(c: Check) -> str:
            for kind, encoder in (("absvit", w / "whole" / "model.pth"), ("vit", w / "vit" / "model.pth")):
                c.verb(f"vl-{task}", "--encoder", encoder, "--text-encoder", d["text"], "--data",
                       d["vl"]["vqa" if task == "vqa" else "flickr30k"], "--out", w / "vl" / task / kind, "--recipe",
                       json.dumps(VL_RECIPE), "--no-mlflow", log=f"vl-{task}-{kind}")
            r = json.loads((w / "vl" / task / "absvit" / "result.json").read_text())
            return "accumulating 2 micro-batches per update; " + (f"VQA {r['vqa_accuracy']:.1f}" if task == "vqa"
                                                                   else f"TR@1 {r['i2t_r1']:.1f}")
        return fn

    def vl_figure(c: Check) -> str:
        c.verb("vl-figure", "--absvit-model", w / "vl" / "vqa" / "absvit" / "model.pth", "--vit-model",
               w / "vl" / "vqa" / "vit" / "model.pth", "--manifest", d["vl"]["figure5"], "--out-dir", w / "fig5",
               "--no-mlflow", log="vl-figure")
        return "Figure 5 and its scores"

    def released(c: Check) -> str:
        import torch

        official = w / "official"
        official.mkdir(exist_ok=True)
        torch.save({"model": weights(w / "whole" / "model.pth")}, official / "absvit.pth")  # the release's layout
        run_suites(c, official / "absvit.pth", official / "eval", "--model", PICO, "--classes", d["data"] / "train",
                   "--img-size", "64", "--crop-pct", "1.0")
        c.verb("released", "--eval", f"absvit_pico={official / 'eval'}", "--out-dir", official / "table",
               "--no-mlflow", log="released")
        assert (official / "table" / "released.md").exists()
        return "an official-layout file (no arch, no classes) evaluated and tabled"

    def ddp(c: Check) -> str:
        c.verb("submit", "--launcher", "local", "--folder", w / "submitit", "--tasks-per-node", "2", "--gpus-per-node",
               "2", "--", "pretrain", "--model", PICO, "--data", d["data"], "--out", w / "ddp", "--no-mlflow", "--set",
               *RECIPE, log="ddp")
        assert weights(w / "ddp" / "model.pth")
        return "2 processes, NCCL"

    found = [("pretrain", pretrain), ("evaluate", evaluate), ("segment", segment), ("decoder+figures", figures),
             ("vl-vqa", vl("vqa")), ("vl-retrieval", vl("retrieval")), ("vl-figure", vl_figure),
             ("released", released)]
    return found + ([("ddp pretrain", ddp)] if device == "cuda" and gpus >= 2 else [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "gpu-check")
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the verbs pick CUDA where they see it
        gpus, card = 0, "cpu"
    else:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: torch sees no CUDA device here; nothing checked (`make gpu-check DEVICE=cpu` runs the same "
                  "checks on CPU)")
            return 1
        gpus, card = torch.cuda.device_count(), torch.cuda.get_device_name(0)
    shutil.rmtree(args.out, ignore_errors=True)
    work = args.out / "work"
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    data = {**make_data(args.out / "inputs"), "work": work}
    print(f"gpu-check on {card} ({gpus} GPU(s)); toy data in {time.perf_counter() - t0:.1f} s; logs in {work}", flush=True)
    print(f"{'check':<16} {'result':<7} {'seconds':>9}  {'peak GPU':>10}  note", flush=True)
    check = Check(work, env)
    for name, fn in checks(data, device=args.device, gpus=gpus):
        check.run(name, fn)
    result = {"card": card, "gpus": gpus, "device": args.device, "seconds": round(time.perf_counter() - t0, 1),
              "rows": check.rows}
    from absvit.io import write_json

    write_json(args.out / "gpu_check.json", result)
    failed = [r["check"] for r in check.rows if not r["passed"]]
    print(f"{len(check.rows) - len(failed)} of {len(check.rows)} checks passed in {result['seconds']:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
