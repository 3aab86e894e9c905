"""The input pipeline's throughput per CPU core: img/s of each transform the pipeline runs, on generated JPEGs of the
real datasets' sizes, in one process on one thread (what one loader worker does).

    make bench                               # runs this (and the model-step benchmark)
    python benchmarks/loader.py --seconds 1  # shorter

It writes ``results/benchmarks/loader.json`` (atomically), which ``absvit plan`` reads to say, per stage and suite,
whether the GPU or the loader bounds a job (``--loader-bench``; without it, the defaults in ``absvit.throughput``,
measured the same way). Run it where the jobs' loaders run (a compute node, or the login node of the same kind).

Rows (``transform``: the image it starts from -> what it does):

- ``pretrain``: ImageNet-size JPEG (500x375) -> decode, timm's training transform of the paper recipe (random resized
  crop 224, flip, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4) to a uint8 tensor (the prefetcher normalises
  and erases on the GPU);
- ``eval``: 500x375 JPEG -> decode, resize 256 (bicubic), centre crop 224, to a uint8 tensor (clean, IN-A / -R /
  -Sketch, FGSM / PGD; the device converts and normalises);
- ``imagenet_c``: 224x224 JPEG -> decode, centre crop 224, to a uint8 tensor (IN-C's 75 folders);
- ``eval_float``, ``imagenet_c_float``: the same two ending in a normalised float tensor on the CPU (torchvision's
  ``ToTensor`` + ``Normalize``), for comparison: what the uint8 batches save;
- ``decode``: 500x375 JPEG -> decode to RGB only;
- ``vl``: COCO-size JPEG (640x480) -> METER's RandAugment, short side 224, centre crop, normalise (V&L training);
- ``segment``: ADE20K-size image and label (683x512 PNG label) -> decode, the segmentation training transform
  (rescale, 512x512 crop, flip, photometric distortion).
"""
from __future__ import annotations

import argparse
import datetime
import io
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from absvit.io import write_json  # noqa: E402

SIZES = {"imagenet": (500, 375), "imagenet_c": (224, 224), "coco": (640, 480), "ade20k": (683, 512)}


def jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A JPEG (quality 90) of smooth random structure, as a photo compresses (not white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def pipelines() -> dict:
    """name -> (source size, fn(encoded image) -> output): the transforms the pipeline's loaders run."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
    from torchvision.transforms import v2

    from absvit.data.segmentation import TrainTransform
    from absvit.evaluate import suite_transform
    from absvit.vl.transforms import vl_transform

    train = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4,
                             interpolation="bicubic", re_prob=0.25, use_prefetcher=True)
    clean = suite_transform("clean", 224, 0.875, "bicubic")
    corrupted = suite_transform("imagenet-c", 224, 0.875, "bicubic")
    clean_float = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    corrupted_float = v2.Compose([v2.CenterCrop(224), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    vl = vl_transform(224, True)
    seg = TrainTransform((512, 512), (2048, 512), (0.5, 2.0), 0.75)
    label = torch.from_numpy(np.random.default_rng(0).integers(0, 150, (512, 683)).astype(np.int64))

    def segment(data):
        from torchvision import tv_tensors

        image = torch.from_numpy(np.array(decode(data))).permute(2, 0, 1).contiguous()
        return seg(tv_tensors.Image(image), tv_tensors.Mask(label))

    return {"pretrain": ("imagenet", lambda d: train(decode(d))), "eval": ("imagenet", lambda d: clean(decode(d))),
            "imagenet_c": ("imagenet_c", lambda d: corrupted(decode(d))),
            "eval_float": ("imagenet", lambda d: clean_float(decode(d))),
            "imagenet_c_float": ("imagenet_c", lambda d: corrupted_float(decode(d))), "decode": ("imagenet", decode),
            "vl": ("coco", lambda d: vl(decode(d))), "segment": ("ade20k", segment)}


def rate(fn, images: list[bytes], seconds: float) -> float:
    """img/s of ``fn`` over ``images`` (cycled), after two warm-up calls, for about ``seconds``."""
    for data in images[:2]:
        fn(data)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(images[done % len(images)])
        done += 1
    return done / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per transform")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "loader.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one loader worker: one core
    images = {name: [jpeg(size, seed) for seed in range(8)] for name, size in SIZES.items()}
    rows = []
    print(f"{'transform':<18} {'source':<12} {'img/s per core':>15}")
    for name, (source, fn) in pipelines().items():
        r = rate(fn, images[source], args.seconds)
        rows.append({"transform": name, "source": f"{SIZES[source][0]}x{SIZES[source][1]} JPEG", "img_s_per_core": r})
        print(f"{name:<18} {rows[-1]['source']:<12} {r:15.0f}", flush=True)
    write_json(args.out, {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), "
                                     f"{torch.get_num_threads()} thread, PIL {Image.__version__}",
                          "measured_at": datetime.date.today().isoformat(), "rows": rows})
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
