"""The mix's image check: every image a selected record names must exist and decode (LLaVA's
`LazySupervisedDataset` crashes mid-epoch on a missing one). The records themselves are checked by
`core.records`."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from firellava.core.progress import Progress

log = logging.getLogger(__name__)

IMAGE_CHECKS = ("decode", "exists")
OK, MISSING, UNDECODABLE = "ok", "missing_image", "undecodable_image"


def _check_one(args: tuple[str, str, str]) -> tuple[str, str, str]:
    """(relative path, status, sha256 of the bytes) for one image."""
    folder, rel, mode = args
    path = os.path.join(folder, rel)
    if mode == "exists":
        return rel, (OK if os.path.isfile(path) else MISSING), ""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return rel, MISSING, ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:  # PIL raises many kinds for a broken file; all mean the trainer could not use it
        return rel, UNDECODABLE, digest
    return rel, OK, digest


def check_images(
    folder: Path, images: Iterable[str], *, mode: str, workers: int | None
) -> dict[str, tuple[str, str]]:
    """Status and content hash of each distinct image (COCO images are shared by several sources' records)."""
    if mode not in IMAGE_CHECKS:
        raise ValueError(f"mix.image_check must be one of {IMAGE_CHECKS}, got {mode!r}")
    unique = sorted(set(images))
    workers = workers or os.cpu_count() or 1
    jobs = [(str(folder), rel, mode) for rel in unique]
    start = time.perf_counter()
    results: dict[str, tuple[str, str]] = {}
    progress = Progress("images checked", len(jobs), unit="images", logger=log)

    def collect(it: Iterable[tuple[str, str, str]]) -> None:
        for rel, status, digest in it:
            results[rel] = (status, digest)
            progress.update()

    # Worker processes only pay off when there are enough images to amortize starting them.
    if workers == 1 or len(jobs) < 2000:
        collect(map(_check_one, jobs))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            collect(pool.map(_check_one, jobs, chunksize=256))
    log.info("images checked: %d (%s) in %.1fs", len(jobs), mode, time.perf_counter() - start)
    return results


def images_digest(results: dict[str, tuple[str, str]]) -> str:
    """One sha256 over every checked image's path and content hash: the images' part of the provenance."""
    h = hashlib.sha256()
    for rel in sorted(results):
        h.update(f"{rel}\t{results[rel][1]}\n".encode())
    return h.hexdigest()
