"""Which training images a benchmark also evaluates on: the pieces the mix and datagen share.

An image is the same as a benchmark's in one of two ways:
- its COCO image id. Ids are shared across COCO's 2014 and 2017 splits, so `COCO_val2014_000000123456.jpg` and
  `train2017/000000123456.jpg` are one image (POPE draws val2014 images, most of which are in train2017). Read
  from the file name alone: no image is opened;
- its perceptual hash (imagehash's pHash) within a Hamming distance, for images from any other source: a
  re-encoded or resized copy under another name. pHash sees grey only, so a candidate must also have the
  same colours (an 8x8 thumbnail, compared for candidates alone).

The benchmarks' own images come from an `EvalImageSource` (the eval stage's loaders list them; the config
wires one in, so no stage imports another).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

# 12 zero-padded digits, alone or after COCO's `COCO_<split><year>_` prefix: the two ways COCO names a file.
_COCO_NAME = re.compile(r"(?:^|[/\\]|COCO_[a-z]+\d{4}_)(\d{12})\.(?:jpe?g|png)$", re.IGNORECASE)
HASH_BITS = 64


def coco_image_id(name: str) -> int | None:
    """The COCO image id a file name or path carries (`COCO_val2014_000000123456.jpg`, `.../000000123456.jpg`
    -> 123456); None for a name in no COCO form."""
    m = _COCO_NAME.search(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class EvalImage:
    """One image a benchmark evaluates on: a file, or encoded bytes (MMBench's base64 cells)."""

    benchmark: str
    name: str  # the benchmark's own name for it: the file name, or the question id of embedded bytes
    path: Path | None = None
    data: bytes | None = None

    @property
    def coco_id(self) -> int | None:
        return coco_image_id(self.name) if self.path is None else coco_image_id(str(self.path))


@dataclass
class EvalImages:
    """Every configured benchmark's images; `unavailable` names benchmarks whose files were not found."""

    by_benchmark: dict[str, list[EvalImage]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # benchmark -> why


class EvalImageSource(Protocol):
    def images(self) -> EvalImages: ...


# --- perceptual hash --------------------------------------------------------------------------------------------


def perceptual_hash(data: bytes) -> int | None:
    """pHash of encoded image bytes as a 64-bit integer; None when the bytes do not decode.

    A JPEG is decoded at a reduced scale (PIL's draft mode): pHash looks at a 32x32 greyscale version anyway,
    and both sides of a comparison are hashed the same way."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("L", (32, 32))
            return int(str(imagehash.phash(im.convert("L"))), 16)
    except (
        Exception
    ):  # any decoding failure: the image cannot be compared, and the mix's own check reports it
        return None


def _hash_file(path: str) -> tuple[str, int | None]:
    try:
        with open(path, "rb") as f:
            return path, perceptual_hash(f.read())
    except OSError:
        return path, None


def hash_files(paths: Sequence[str], workers: int | None = None) -> dict[str, int | None]:
    """pHash of each file, in worker processes when there are enough files to pay for starting them."""
    start = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < 500:
        out = dict(map(_hash_file, paths))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = dict(pool.map(_hash_file, paths, chunksize=64))
    log.info("perceptual hashes: %d images in %.1fs", len(paths), time.perf_counter() - start)
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class HashIndex:
    """Hashes within `max_distance` bits of a query, without comparing against every entry: the 64 bits are cut
    into `max_distance + 1` bands, and two hashes that differ in at most `max_distance` bits agree exactly on
    at least one band (pigeonhole), so only entries sharing a band are compared."""

    def __init__(self, entries: Iterable[tuple[int, str]], max_distance: int) -> None:
        if not 0 <= max_distance < 16:
            raise ValueError(f"max_distance must be in 0..15 bits of {HASH_BITS}, got {max_distance}")
        self.max_distance = max_distance
        n = max_distance + 1
        self._bands = [(i * HASH_BITS // n, (i + 1) * HASH_BITS // n) for i in range(n)]
        self._tables: list[dict[int, list[tuple[int, str]]]] = [defaultdict(list) for _ in self._bands]
        for h, key in entries:
            for table, band in zip(self._tables, self._bands):
                table[self._band(h, band)].append((h, key))

    @staticmethod
    def _band(h: int, band: tuple[int, int]) -> int:
        lo, hi = band
        return (h >> lo) & ((1 << (hi - lo)) - 1)

    def near(self, h: int) -> set[str]:
        found = set()
        for table, band in zip(self._tables, self._bands):
            for other, key in table.get(self._band(h, band), ()):
                if hamming(h, other) <= self.max_distance:
                    found.add(key)
        return found


# --- matching ---------------------------------------------------------------------------------------------------


def _colours(source: str | bytes) -> np.ndarray | None:
    """An 8x8 colour thumbnail (box-averaged): pHash is computed on grey, so two different pictures with the
    same layout (one square, orange or green) can share it; the colours tell them apart."""
    from PIL import Image

    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as im:
            return np.asarray(im.convert("RGB").resize((8, 8), Image.Resampling.BOX), dtype=np.int16)
    except Exception:  # an image that does not decode matches nothing
        return None


@dataclass
class Matcher:
    """The benchmarks' images, ready to be matched against training images."""

    by_coco_id: dict[int, set[str]]  # COCO id -> benchmarks that use it
    hashes: HashIndex | None  # None: perceptual matching off; keys index `hashed_images`
    hashed_images: list[EvalImage]
    max_colour_difference: int
    images_per_benchmark: dict[str, int]
    hashed_per_benchmark: dict[str, int]

    @classmethod
    def build(
        cls,
        evals: EvalImages,
        *,
        perceptual: bool,
        max_distance: int,
        max_colour_difference: int = 32,
        workers: int | None = None,
    ) -> Matcher:
        by_id: dict[int, set[str]] = defaultdict(set)
        for bench, images in evals.by_benchmark.items():
            for image in images:
                if image.coco_id is not None:
                    by_id[image.coco_id].add(bench)
        hashes, hashed, listed = None, {}, []
        if perceptual:
            files = sorted({str(i.path) for imgs in evals.by_benchmark.values() for i in imgs if i.path})
            of_file = hash_files(files, workers)
            entries = []
            for bench, images in evals.by_benchmark.items():
                n = 0
                for image in images:
                    h = of_file[str(image.path)] if image.path else perceptual_hash(image.data or b"")
                    if h is not None:
                        entries.append((h, len(listed)))
                        listed.append(image)
                        n += 1
                hashed[bench] = n
            hashes = HashIndex(entries, max_distance)
        return cls(
            dict(by_id),
            hashes,
            listed,
            max_colour_difference,
            {b: len({i.path or i.name for i in imgs}) for b, imgs in evals.by_benchmark.items()},
            hashed,
        )

    def by_id(self, image: str) -> set[str]:
        cid = coco_image_id(image)
        return self.by_coco_id.get(cid, set()) if cid is not None else set()

    def by_hash(self, h: int | None, path: str) -> set[str]:
        """Benchmarks with an image within the pHash distance of the training image at `path`, and of its
        colours (compared only for the few pHash candidates)."""
        if self.hashes is None or h is None:
            return set()
        candidates = self.hashes.near(h)
        if not candidates:
            return set()
        mine = _colours(path)
        found = set()
        for k in candidates:
            image = self.hashed_images[k]
            theirs = _colours(str(image.path) if image.path else image.data or b"")
            if mine is not None and theirs is not None and self._close(mine, theirs):
                found.add(image.benchmark)
        return found

    def _close(self, a: np.ndarray, b: np.ndarray) -> bool:
        return int(np.abs(a - b).max()) <= self.max_colour_difference


# --- the config ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecontamSpec:
    """`mix.decontamination` (datagen's image selection takes the same): which benchmarks, and what to do."""

    benchmarks: EvalImageSource | None = None  # None: no decontamination (the manifest says so)
    remove: bool = True  # false: matches are counted and reported, and kept
    perceptual_hash: bool = True  # false: COCO ids only, no image is opened
    max_distance: int = 4  # pHash bits that may differ for two images to count as one
    max_colour_difference: int = 32  # and the most any cell of their 8x8 colour thumbnails may differ (0-255)
    require_benchmark_files: bool = True  # false: a benchmark without its files is listed as not checked
    workers: int | None = None  # processes for hashing; null = all cores

    def load(self) -> EvalImages:
        """The benchmarks' images; fails naming every benchmark whose files are missing, unless allowed."""
        evals = self.benchmarks.images() if self.benchmarks is not None else EvalImages()
        if evals.unavailable and self.require_benchmark_files:
            listed = "\n  ".join(f"{b}: {why}" for b, why in evals.unavailable.items())
            raise FileNotFoundError(
                f"decontamination: benchmark files not found:\n  {listed}\n"
                "Fetch the eval data first, or set mix.decontamination.require_benchmark_files=false to mix "
                "without checking these benchmarks (the manifest lists them as not checked)."
            )
        return evals


def excluded_coco_ids(spec: DecontamSpec | None) -> set[int]:
    """The COCO ids of every configured benchmark's images when contamination is removed: what datagen's image
    selection leaves out (by id alone; the mix's perceptual hashes catch copies under other names)."""
    if spec is None or spec.benchmarks is None or not spec.remove:
        return set()
    return {i.coco_id for imgs in spec.load().by_benchmark.values() for i in imgs if i.coco_id is not None}
