"""What a dataset's provenance costs: the full content hash (every byte read) against the remembered one (one
``stat`` per image, then a lookup), side by side in one run, and how each grows with N.

Writes ``--count`` images of ``--size`` x ``--size`` random pixels as JPEG (COCO-sized files by default,
about 0.15 MB each at quality 90), then for the first N of them (each of ``--steps``) times
``verify_content_hash()`` and a fresh dataset's ``content_hash`` once the hash is remembered, alternating,
``--repeats`` times each. The files stay in the page cache, so the full hash here is the floor of what a cold
read from disk costs.

    python benchmarks/provenance.py --count 2000 --size 640 --json bench-results/provenance.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_folder(folder: Path, count: int, size: int) -> int:
    """``count`` random JPEGs with one caption each; returns their bytes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        # Smooth noise compresses like a photo (pure noise would be 3x larger than COCO's files).
        small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        image.save(folder / "images" / f"{i:06d}.jpg", quality=90)
        lines.append(json.dumps({"file": f"images/{i:06d}.jpg", "captions": [f"image {i}"]}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return sum(p.stat().st_size for p in (folder / "images").iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from fastgda.data import ImageCaptionFolder

    work = Path(tempfile.mkdtemp(prefix="provenance-"))
    os.environ["FASTGDA_CACHE"] = str(
        work / "cache"
    )  # remembered hashes go here, not into the user's cache
    try:
        total = write_folder(work / "all", args.count, args.size)
        print(f"{args.count} JPEGs of {args.size}x{args.size}: {total / 1e6:.0f} MB "
              f"({total / args.count / 1e6:.3f} MB each)")  # fmt: skip
        rows = []
        for n in sorted(set(args.steps)):
            folder = work / f"n{n}"
            folder.mkdir()
            (folder / "images").symlink_to(work / "all" / "images")
            lines = (work / "all" / "captions.jsonl").read_text().splitlines()[:n]
            (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
            _ = ImageCaptionFolder(folder).content_hash  # remembered from here on
            full, remembered = [], []
            for _ in range(args.repeats):
                began = time.perf_counter()
                ImageCaptionFolder(folder).verify_content_hash()
                full.append(time.perf_counter() - began)
                began = time.perf_counter()
                _ = ImageCaptionFolder(folder).content_hash
                remembered.append(time.perf_counter() - began)
            rows.append(
                {
                    "n": n,
                    "full_s": float(np.median(full)),
                    "remembered_s": float(np.median(remembered)),
                }
            )
        print()
        print("| N | full hash (every byte) | remembered (stat key + lookup) | ratio |")
        print("|---:|---:|---:|---:|")
        for row in rows:
            ratio = row["full_s"] / row["remembered_s"]
            print(f"| {row['n']:,} | {row['full_s'] * 1e3:.0f} ms | {row['remembered_s'] * 1e3:.1f} ms | "
                  f"{ratio:.0f}x |")  # fmt: skip
        # Growth: the exponent of time against N between the smallest and the largest N.
        first, last = rows[0], rows[-1]
        for key in ("full_s", "remembered_s"):
            slope = np.log(last[key] / first[key]) / np.log(last["n"] / first["n"])
            print(f"growth of {key[:-2]}: N^{slope:.2f}")
        per_image = {key: last[key] / last["n"] for key in ("full_s", "remembered_s")}
        full, cheap = per_image["full_s"], per_image["remembered_s"]
        print(f"per image: full {full * 1e6:.0f} us, remembered {cheap * 1e6:.1f} us; at N = 118,287: "
              f"{full * 118287:.0f} s against {cheap * 118287:.1f} s")  # fmt: skip
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps({"megabytes": total / 1e6, "rows": rows}, indent=1)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
