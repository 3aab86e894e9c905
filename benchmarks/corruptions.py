"""Per-image time of the ImageNet-C corruptions: imagecorruptions' glass blur vs absvit's.

    python benchmarks/corruptions.py                       # 224 px, severity 3, median of 5
    python benchmarks/corruptions.py --size 224 --severity 3 --repeats 5 --all

Both glass blurs run from the same np.random seed and are checked pixel-identical.
``--all`` also times every corruption through ``absvit.data.corruptions.corrupt``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from absvit.data.corruptions import CORRUPTIONS, corrupt, load_imagecorruptions


def _median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        np.random.seed(i)
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--all", action="store_true", help="also time all 15 corruptions via corrupt()")
    args = ap.parse_args()

    load_imagecorruptions()  # the compat layer, before the library is imported
    import imagecorruptions.corruptions as impl

    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    pil = Image.fromarray(image)

    np.random.seed(0)
    want = np.uint8(impl.glass_blur(pil, args.severity))
    np.random.seed(0)
    got = corrupt(image, "glass_blur", args.severity)
    identical = np.array_equal(got, want)

    lib = _median_ms(lambda: impl.glass_blur(pil, args.severity), args.repeats)
    fast = _median_ms(lambda: corrupt(image, "glass_blur", args.severity), args.repeats)
    print(f"glass_blur, {args.size}x{args.size} RGB, severity {args.severity}, median of {args.repeats}")
    print(f"{'implementation':<28}{'ms/image':>10}{'speed-up':>10}")
    print(f"{'imagecorruptions 1.1.2':<28}{lib:>10.1f}{1.0:>9.1f}x")
    print(f"{'absvit (vectorised)':<28}{fast:>10.2f}{lib / fast:>9.1f}x")
    print(f"pixel-identical: {identical}")

    if args.all:
        print(f"\n{'corruption':<20}{'ms/image':>10}")
        total = 0.0
        for name in CORRUPTIONS:
            ms = _median_ms(lambda: corrupt(image, name, args.severity), args.repeats)
            total += ms
            print(f"{name:<20}{ms:>10.1f}")
        print(f"{'all 15':<20}{total:>10.1f}")
    if not identical:
        raise SystemExit("glass blur differs from the library")


if __name__ == "__main__":
    main()
