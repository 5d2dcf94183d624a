"""What decontamination's perceptual hashing costs per 10K images, beside the mix's own decode check of the same
images (`mix/validate.py`), both in one process on one core, timed as CPU seconds.

Images: JPEGs the size of COCO's (640x480, quality 90) with photo-like content (smooth gradients and noise), so
decoding costs what it does on real photos. The hash decodes JPEGs at a reduced scale (PIL's draft mode), the
check at full size.

    .venv/bin/python perf/decontam_hash.py                 # 2,000 images, figures scaled to 10K
    .venv/bin/python perf/decontam_hash.py --images 10000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.core.decontam import hash_files  # noqa: E402
from firellava.mix.validate import _check_one  # noqa: E402


def write_images(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:480, 0:640]
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.2, 2.0, 3)
        base = np.stack([(x * a) % 256, (y * b) % 256, ((x + y) * c) % 256], axis=-1)
        noise = rng.normal(0, 12, base.shape)
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)
        paths.append(str(path))
    return paths


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="decontam_hash.", dir=args.workdir))
    try:
        paths = write_images(work, args.images)
        per_10k = 10_000 / len(paths)
        folder = str(work)
        names = [Path(p).name for p in paths]
        check = cpu_seconds(lambda: [_check_one((folder, n, "decode")) for n in names])
        phash = cpu_seconds(lambda: hash_files(paths, workers=1))
        print(f"{len(paths)} images of 640x480 (JPEG q90); CPU seconds per 10K images, one core:")
        print(f"  perceptual hash (imagehash.phash, draft decode): {phash * per_10k:.1f}s")
        print(f"  the mix's decode check of the same images:       {check * per_10k:.1f}s")
        print(f"  ratio hash/check: {phash / check:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
