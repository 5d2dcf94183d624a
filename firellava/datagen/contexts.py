"""What the text-only teacher reads about an image: COCO's five captions and, for detail and reasoning, one
`category: [x1, y1, x2, y2]` line per instance, normalized to [0, 1] by image size."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycocotools.coco import COCO

log = logging.getLogger(__name__)

TYPES: tuple[str, ...] = ("conversation", "detail", "complex_reasoning")
# Conversation prompts get captions only, as LLaVA did (LLaVA issue #87).
USES_BOXES = {"conversation": False, "detail": True, "complex_reasoning": True}


@dataclass(frozen=True)
class Instance:
    category: str
    bbox: tuple[float, float, float, float]  # COCO xywh, pixels
    crowd: bool = False  # COCO iscrowd: one box over many objects, so the category has no exact count


@dataclass(frozen=True)
class ImageContext:
    image_id: int
    file_name: str
    width: int
    height: int
    captions: tuple[str, ...]
    instances: tuple[Instance, ...] = ()


def format_box(inst: Instance, width: int, height: int, decimals: int = 3) -> str:
    x, y, w, h = inst.bbox
    coords = (x / width, y / height, (x + w) / width, (y + h) / height)
    return f"{inst.category}: [" + ", ".join(f"{min(max(v, 0.0), 1.0):.{decimals}f}" for v in coords) + "]"


def format_context(ctx: ImageContext, with_boxes: bool, decimals: int = 3) -> str:
    lines = [c.strip() for c in ctx.captions]
    if with_boxes and ctx.instances:
        lines.append("")
        lines += [format_box(i, ctx.width, ctx.height, decimals) for i in ctx.instances]
    return "\n".join(lines)


def _load_coco(path: Path, what: str) -> COCO:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: COCO {what} file not found")
    try:
        # pycocotools prints timing chatter on stdout; keep the pipeline's own log clean.
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except (KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"{path}: not a COCO {what} file ({type(e).__name__}: {e})") from e


@dataclass(frozen=True)
class CocoContexts:
    contexts: Mapping[int, ImageContext]  # images with at least one caption
    without_captions: tuple[int, ...]  # skipped, and counted in stats
    categories: tuple[str, ...] = ()  # the instance file's category names, in its order


def load_contexts(instances_path: str | Path, captions_path: str | Path) -> CocoContexts:
    """Read both COCO files with pycocotools; a missing or corrupt file fails naming the file and field."""
    instances_path, captions_path = Path(instances_path), Path(captions_path)
    inst = _load_coco(instances_path, "instances")
    caps = _load_coco(captions_path, "captions")
    names = {c["id"]: c["name"] for c in inst.loadCats(inst.getCatIds())}
    contexts: dict[int, ImageContext] = {}
    without: list[int] = []
    for image_id in sorted(inst.getImgIds()):
        img = inst.imgs[image_id]
        for field in ("file_name", "width", "height"):
            if field not in img:
                raise ValueError(f"{instances_path}: image {image_id} has no field {field!r}")
        captions = tuple(
            a["caption"] for a in caps.imgToAnns.get(image_id, []) if a.get("caption", "").strip()
        )
        if not captions:
            without.append(image_id)
            continue
        instances = []
        for ann in inst.imgToAnns.get(image_id, []):
            if ann.get("category_id") not in names:
                raise ValueError(
                    f"{instances_path}: annotation {ann.get('id')} (image {image_id}) has unknown "
                    f"category_id {ann.get('category_id')!r}"
                )
            instances.append(
                Instance(
                    names[ann["category_id"]],
                    tuple(float(v) for v in ann["bbox"]),
                    bool(ann.get("iscrowd", 0)),
                )
            )
        contexts[image_id] = ImageContext(
            image_id, img["file_name"], int(img["width"]), int(img["height"]), captions, tuple(instances)
        )
    if without:
        log.warning("%d COCO images have no captions and are skipped (e.g. %s)", len(without), without[:5])
    return CocoContexts(contexts, tuple(without), tuple(names.values()))


@dataclass(frozen=True)
class WorkItem:
    id: str
    type: str
    image_id: int


def select_work(image_ids: Sequence[int], counts: Mapping[str, int], seed: int) -> list[WorkItem]:
    """Seeded choice of images per type, without repeats inside a type (types may share images, as in
    LLaVA-Instruct: 158K samples over about 80K images). Independent of sharding, so every shard agrees."""
    ids = sorted(image_ids)
    work = []
    for kind in TYPES:
        n = int(counts.get(kind, 0))
        if n > len(ids):
            raise ValueError(f"data_gen.counts.{kind}={n} but only {len(ids)} captioned COCO images exist")
        rng = random.Random(f"datagen/{seed}/{kind}")
        work += [WorkItem(f"{kind}-{i:012d}", kind, i) for i in sorted(rng.sample(ids, n))]
    return work
