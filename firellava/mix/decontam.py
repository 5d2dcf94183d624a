"""The mix's decontamination: training records whose image a configured benchmark evaluates on, counted per
benchmark and (by default) removed. Matching is `core.decontam`'s: COCO ids from file names, then perceptual
hashes of the images (after the image check, so every image here exists and decodes)."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from firellava.core.decontam import DecontamSpec, Matcher, hash_files

log = logging.getLogger(__name__)

EVAL_OVERLAP = "eval_overlap"  # the exclusion reason


class _Item(Protocol):
    where: str
    id: Any
    image: str | None


@dataclass
class Decontamination:
    removed: dict[str, list[_Item]] = field(default_factory=dict)  # source -> records taken out
    report: dict[str, Any] = field(default_factory=dict)  # the manifest's `decontamination`


def _statement(spec: DecontamSpec, benchmarks: Sequence[str], touched: int) -> str:
    if spec.benchmarks is None:
        return "Not decontaminated: no benchmark was configured (mix.decontamination.benchmarks is null)."
    how = "by COCO image id" + (" and by perceptual hash" if spec.perceptual_hash else " only")
    if not touched:
        return f"No training record uses an image of the benchmarks checked ({', '.join(benchmarks)}), {how}."
    if spec.remove:
        return (
            f"{touched:,} training record(s) used an image that a benchmark evaluates on (matched {how}); "
            "they were removed (mix.decontamination.remove=true, the default)."
        )
    return (
        f"CONTAMINATED: {touched:,} training record(s) use an image that a benchmark evaluates on (matched "
        f"{how}); they were KEPT because mix.decontamination.remove=false was set. Scores on those benchmarks "
        "are not clean."
    )


def decontaminate(spec: DecontamSpec, items: dict[str, list[_Item]], image_folder: Path) -> Decontamination:
    """Find (and unless `spec.remove` is off, take out of `items`) the records that touch a benchmark image."""
    start = time.perf_counter()
    evals = spec.load()
    matcher = Matcher.build(
        evals,
        perceptual=spec.perceptual_hash,
        max_distance=spec.max_distance,
        max_colour_difference=spec.max_colour_difference,
        workers=spec.workers,
    )
    load_seconds = time.perf_counter() - start
    t = time.perf_counter()
    images = sorted({i.image for recs in items.values() for i in recs if i.image is not None})
    hits: dict[str, dict[str, str]] = defaultdict(dict)  # image -> benchmark -> how it matched
    for image in images:
        for bench in matcher.by_id(image):
            hits[image][bench] = "coco_id"
    id_seconds = time.perf_counter() - t
    hash_seconds = 0.0
    if spec.perceptual_hash and matcher.hashes is not None:
        t = time.perf_counter()
        hashed = hash_files([str(image_folder / rel) for rel in images], spec.workers)
        for rel in images:
            path = str(image_folder / rel)
            for bench in matcher.by_hash(hashed[path], path):
                hits[rel].setdefault(bench, "perceptual_hash")
        hash_seconds = time.perf_counter() - t

    per_bench: dict[str, dict[str, Any]] = {
        b: {"records": 0, "images": set(), "by_source": Counter(), "matched_by": Counter()}
        for b in evals.by_benchmark
    }
    removed: dict[str, list[_Item]] = {}
    touched = 0
    for name, recs in items.items():
        kept = []
        for item in recs:
            matched = hits.get(item.image) if item.image is not None else None
            if not matched:
                kept.append(item)
                continue
            touched += 1
            for bench, how in matched.items():
                entry = per_bench[bench]
                entry["records"] += 1
                entry["by_source"][name] += 1
                if item.image not in entry["images"]:
                    entry["images"].add(item.image)
                    entry["matched_by"][how] += 1
            removed.setdefault(name, []).append(item)
        if spec.remove:
            recs[:] = kept
    report = {
        "enabled": spec.benchmarks is not None,
        "action": "removed" if spec.remove else "kept",
        "statement": _statement(spec, list(evals.by_benchmark), touched),
        "match": {
            "coco_id": "COCO image id from the file name, across the 2014 and 2017 splits",
            "perceptual_hash": (
                {
                    "algorithm": "imagehash.phash (64 bits), confirmed by an 8x8 colour thumbnail",
                    "max_distance": spec.max_distance,
                    "max_colour_difference": spec.max_colour_difference,
                }
                if spec.perceptual_hash
                else None
            ),
        },
        "training_images": len(images),
        "records_touching_benchmarks": touched,
        "records_removed": touched if spec.remove else 0,
        "benchmarks": {
            bench: {
                "eval_images": matcher.images_per_benchmark.get(bench, 0),
                "eval_images_hashed": matcher.hashed_per_benchmark.get(bench),
                "training_records": e["records"],
                "training_images": len(e["images"]),
                "matched_by": dict(e["matched_by"]),
                "by_source": dict(e["by_source"]),
                "removed": spec.remove and e["records"] > 0,
            }
            for bench, e in per_bench.items()
        },
        "not_checked": dict(evals.unavailable),
        "seconds": {
            "benchmarks": round(load_seconds, 2),
            "id_match": round(id_seconds, 2),
            "perceptual_hash": round(hash_seconds, 2),
        },
    }
    log.info("decontamination: %s", report["statement"])
    return Decontamination(removed if spec.remove else {}, report)


def render_section(report: dict[str, Any] | None) -> list[str]:
    """The data card's lines on decontamination (markdown)."""
    if not report:
        return []
    rows = [
        f"| {b} | {e['eval_images']:,} | {e['training_records']:,} | {e['training_images']:,} | "
        f"{', '.join(f'{k}: {v}' for k, v in e['matched_by'].items()) or '-'} | "
        f"{'removed' if e['removed'] else ('kept' if e['training_records'] else '-')} |"
        for b, e in report["benchmarks"].items()
    ]
    lines = ["## Decontamination against the evaluation images", "", report["statement"], ""]
    if rows:
        lines += [
            "| benchmark | eval images | training records | training images | matched by | action |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    if report.get("not_checked"):
        lines += ["Not checked (benchmark files missing): " + ", ".join(report["not_checked"]) + ".", ""]
    return lines
