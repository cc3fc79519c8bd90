"""Reading a folder of mixed images: decoding one at a time against side by side on threads, in one run.

Writes ``--count`` rows of the world as real-world-shaped files (tests/_mixed_images.py: ten sizes, modes and
formats, EXIF rotation included, scaled up by ``--scale`` so each decode does real work), then times
``ImageCaptionFolder.load_images(size=...)`` (decode, make RGB, square to 128 as EfficientNet reads them) with 1
thread and with ``fastgda.images.decode_threads()``, alternating, ``--repeats`` times each.

    python benchmarks/decode_threads.py --world runs/world --count 400 --scale 6
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from _mixed_images import VARIANTS, write_mixed_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="runs/world")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--scale", type=int, default=6, help="each variant's size times this")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import _mixed_images
    from fastgda import images
    from fastgda.data import ImageCaptionFolder, open_dataset

    world = open_dataset(args.world)
    scaled = [((w * args.scale, h * args.scale), m, k) for (w, h), m, k in VARIANTS]
    folder = Path(tempfile.mkdtemp(prefix="decode-"))
    try:
        with mock.patch.object(_mixed_images, "VARIANTS", scaled):
            write_mixed_folder(folder, world, args.count)
        data = ImageCaptionFolder(folder)
        pixels = sum(w * h for (w, h), _, _ in scaled) / len(scaled)
        threads = images.decode_threads()
        timings: dict[int, list[float]] = {1: [], threads: []}
        for _ in range(args.repeats):
            for n in timings:
                with mock.patch.object(images, "decode_threads", lambda n=n: n):
                    began = time.perf_counter()
                    batch = data.load_images(size=128)
                    timings[n].append(time.perf_counter() - began)
        assert batch.shape == (args.count, 128, 128, 3)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.count} images of {len(VARIANTS)} sizes, modes and formats (mean {pixels / 1e6:.2f} Mpx), decoded, "
          f"made RGB and squared to 128; best of {args.repeats}, alternating")  # fmt: skip
    print()
    print("| threads | seconds | images / s |")
    print("|---:|---:|---:|")
    for n, seconds in timings.items():
        best = min(seconds)
        print(f"| {n} | {best:.2f} | {args.count / best:.0f} |")
    print()
    print(f"speed-up of {threads} threads over 1: {min(timings[1]) / min(timings[threads]):.2f}x")


if __name__ == "__main__":
    main()
