"""Generated and mixed data: records, rejects, counts per type and source, text lengths, samples drawn with their
images and COCO boxes."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firellava.core.io import iter_jsonl, read_json

REJECTED = "rejected.jsonl"


def _datagen_files(datagen_dir: Path, name: str | None = None) -> list[Path]:
    """The stage's JSONL files, also those of every shard directory (`shard-i-of-n/`)."""
    roots = [datagen_dir, *sorted(datagen_dir.glob("shard-*-of-*"))]
    files = []
    for root in roots:
        if name:
            files += [root / name] if (root / name).exists() else []
        else:
            files += sorted(p for p in root.glob("*.jsonl") if p.name != REJECTED)
    return files


def generated_records(datagen_dir: str | Path) -> list[dict[str, Any]]:
    return [rec for path in _datagen_files(Path(datagen_dir)) for _, rec, _ in iter_jsonl(path)]


def rejected_records(datagen_dir: str | Path) -> list[dict[str, Any]]:
    return [rec for path in _datagen_files(Path(datagen_dir), REJECTED) for _, rec, _ in iter_jsonl(path)]


def reject_reasons(rejected: Iterable[Mapping[str, Any]]) -> dict[str, Counter]:
    """Per type, the count of each reject reason."""
    out: dict[str, Counter] = defaultdict(Counter)
    for r in rejected:
        out[r["type"]][r["reason"]] += 1
    return dict(out)


def mix_records(mix_json: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(mix_json).read_text(encoding="utf-8"))


def counts(records: Iterable[Mapping[str, Any]], key: str) -> Counter:
    """Records per value of `key` (`type`, `source`, `license`); records without it count under `-`."""
    return Counter(str(r.get(key, "-")) for r in records)


def text_lengths(records: Iterable[Mapping[str, Any]], role: str) -> list[int]:
    """Words per record in the turns of `role` (`human` or `gpt`), the `<image>` marker left out."""
    return [
        sum(len(t["value"].replace("<image>", " ").split()) for t in r["conversations"] if t["from"] == role)
        for r in records
    ]


def lengths_by(records: Sequence[Mapping[str, Any]], key: str, role: str = "gpt") -> dict[str, list[int]]:
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[str(r.get(key, "-"))].append(r)
    return {name: text_lengths(rs, role) for name, rs in sorted(groups.items())}


class CocoBoxes:
    """COCO instances by image file name: (category, [x, y, w, h]) in pixels."""

    def __init__(self, instances_json: str | Path) -> None:
        coco = read_json(instances_json)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        files = {im["id"]: im["file_name"] for im in coco["images"]}
        self.by_file: dict[str, list[tuple[str, list[float]]]] = defaultdict(list)
        for ann in coco["annotations"]:
            self.by_file[files[ann["image_id"]]].append((names[ann["category_id"]], ann["bbox"]))

    def boxes(self, image: str) -> list[tuple[str, list[float]]]:
        return self.by_file.get(Path(image).name, [])


def conversation_text(record: Mapping[str, Any], width: int = 90) -> str:
    import textwrap

    lines = []
    for turn in record["conversations"]:
        text = turn["value"].replace("<image>", "").strip()
        lines += textwrap.wrap(f"{turn['from']}: {text}", width) or [f"{turn['from']}:"]
    return "\n".join(lines)


def draw_sample(
    ax: Any, record: Mapping[str, Any], image_folder: str | Path, boxes: CocoBoxes | None
) -> None:
    """The record's image with its COCO boxes (when it has an image that COCO annotates), titled with its type
    (generated records) or source and its id."""
    from PIL import Image

    kind = record.get("type") or record.get("source") or ""
    ax.set_title(f"{kind}\n{str(record['id'])[:28]}", fontsize=7)
    ax.axis("off")
    if "image" not in record:
        ax.text(0.5, 0.5, "(text-only)", ha="center", va="center")
        return
    ax.imshow(Image.open(Path(image_folder) / record["image"]))
    for name, (x, y, w, h) in boxes.boxes(record["image"]) if boxes else []:
        ax.add_patch(_rectangle(x, y, w, h))
        ax.text(x, y, name, fontsize=6, color="yellow", va="bottom")


def _rectangle(x: float, y: float, w: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, lw=1.2, edgecolor="yellow")


def histograms(ax: Any, groups: Mapping[str, Sequence[int]], xlabel: str, bins: int = 20) -> None:
    for name, values in groups.items():
        if values:
            ax.hist(values, bins=bins, alpha=0.5, label=f"{name} ({len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("records")
    ax.legend(fontsize=7)


def quality_tables(mix_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The mix manifest's checks as rows: datagen's grounding per type (CHAIR rates, count mismatches), the
    near-duplicates removed (datagen's, within the generated data; the mix's, against other sources' records of
    the same image) and the decontamination per benchmark."""
    manifest = read_json(Path(mix_dir) / "manifest.json")
    checks = manifest.get("generated_checks") or {}
    grounding = [
        {"type": kind, **{k: v for k, v in t.items() if k != "examples"}}
        for kind, t in checks.get("per_type", {}).items()
    ]
    mix_dups = manifest.get("near_duplicates") or {}
    near_duplicates = [
        {
            "where": "datagen (within the generated data)",
            "removed": checks.get("rejected", {}).get("near_duplicate"),
        },
        {"where": "mix (generated vs other sources, same image)", "removed": mix_dups.get("removed")},
    ]
    decontam = manifest.get("decontamination") or {}
    decontamination = [
        {
            "benchmark": bench,
            **{k: e[k] for k in ("eval_images", "training_records", "training_images", "removed")},
        }
        for bench, e in decontam.get("benchmarks", {}).items()
    ]
    return {"grounding": grounding, "near_duplicates": near_duplicates, "decontamination": decontamination}
