"""Write the toy world's data in the real on-disk formats: COCO, LCS-558K, mix665k and its reference files.

The layout mirrors LLaVA's `playground/data`, so the relative image paths inside the JSON files are the real
ones and the pipeline reads toy and production data through the same code. The mix carries all ten sources of
LLaVA-1.5's mix with their real markers and, like the real file, no source field: the mix
stage has to recognize them the way it must in production.

Each component draws from its own random stream derived from the seed, so changing one source's count leaves
every other file's content unchanged (only the mix's record order changes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.core.instructions import BRIEF_INSTRUCTIONS, OPTION_LETTER, SHORT_ANSWER, TEXTCAPS_PROMPT
from firellava.core.io import write_json
from firellava.core.records import conversation
from firellava.toy import language as lang
from firellava.toy.scenes import SHAPES, Scene, draw_scene, sample_scene, shape_outline

SOURCES: tuple[str, ...] = (
    "llava_instruct",
    "sharegpt",
    "vqav2",
    "gqa",
    "okvqa",
    "ocr_vqa",
    "a_okvqa",
    "textcaps",
    "refcoco",
    "vg",
)
# VQA-style sources are the larger ones: they are what teaches a tiny model colours, shapes and counts.
DEFAULT_PER_SOURCE: dict[str, int] = {
    "llava_instruct": 80,
    "sharegpt": 40,
    "vqav2": 120,
    "gqa": 100,
    "okvqa": 40,
    "ocr_vqa": 60,
    "a_okvqa": 60,
    "textcaps": 40,
    "refcoco": 60,
    "vg": 60,
}
COCO_SOURCES = ("llava_instruct", "vqav2", "okvqa", "a_okvqa", "refcoco")

JPEG_QUALITY = 95  # with 4:4:4 chroma, small shapes keep their colour up to their edges
LICENSE = {
    "id": 1,
    "name": "CC0 1.0 (generated toy data)",
    "url": "https://creativecommons.org/publicdomain/zero/1.0/",
}
# Colour is listed twice: with two counting generators, counts would otherwise crowd out the colour questions.
# The whole-scene count twice: once, the finetuned model counted held-out scenes less well (docs/experiments.md
# section 25). Existence twice and once with the "no"s whose colour and kind are both in the scene: with one
# existence question in seven, the finetuned model answered held-out existence less well than the text-pretrained
# LLM did (section 29).
VQA_GENERATORS = (
    lang.colour_qa,
    lang.colour_qa,
    lang.shape_qa,
    lang.count_qa,
    lang.count_qa,
    lang.count_kind_qa,
    lang.exists_qa,
    lang.exists_qa,
    lang.exists_bound_qa,
)
GQA_GENERATORS = (lang.relation_qa, lang.relative_shape_qa, lang.both_qa, lang.colour_qa, lang.exists_qa)
OCR_GENERATORS = (lang.ocr_title_qa, lang.ocr_title_check_qa, lang.count_qa)
REGION_GENERATORS = (lang.region_description_qa, lang.region_box_qa)
# Names of the official files, so loaders written against the real datasets open the toy ones unchanged.
VQAV2_FILES = ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_train2014_annotations.json")
OKVQA_FILES = ("OpenEnded_mscoco_train2014_questions.json", "mscoco_train2014_annotations.json")


@dataclass(frozen=True)
class ToyData:
    """Absolute paths of everything `build_toy_data` wrote, and how much of each."""

    root: Path
    coco_instances: Path
    coco_captions: Path
    coco_image_dir: Path
    pretrain_json: Path
    pretrain_image_dir: Path  # the pretraining --image_folder
    mix665k_json: Path
    image_folder: Path  # the finetuning --image_folder: mix image paths are relative to it
    llava_instruct_json: Path
    vqav2_questions: Path
    vqav2_annotations: Path
    okvqa_questions: Path
    okvqa_annotations: Path
    counts: dict[str, Any]
    # The COCO scenes themselves: the toy benchmarks reuse a few, so that decontamination has overlaps to find.
    coco_scenes: tuple[Scene, ...] = field(default=(), repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """Paths as strings and counts: what the stage records in its summary JSON."""
        out: dict[str, Any] = {
            f.name: str(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("counts", "coco_scenes")
        }
        out["counts"] = {k: dict(v) if isinstance(v, dict) else v for k, v in self.counts.items()}
        return out


def _rng(seed: int, component: str) -> random.Random:
    # Seeding with a str hashes it with SHA-512: stable across processes, unlike hash().
    return random.Random(f"toy-world/{seed}/{component}")


def _save_image(scene: Scene, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_scene(scene).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=0)


def _turns(
    pairs: Sequence[lang.QA], *, image: bool, suffix: str | None = None, image_first: bool = True
) -> list[dict[str, str]]:
    """LLaVA conversation turns; the format suffix, like the image token, goes on the first human turn."""
    if suffix and pairs:
        pairs = [(f"{pairs[0][0]}\n{suffix}", pairs[0][1]), *pairs[1:]]
    return conversation(pairs, image=image, image_first=image_first)


# --- COCO ---------------------------------------------------------------------------------------------------


def coco_file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def _polygon(points: Sequence[tuple[float, float]]) -> list[float]:
    return [round(v, 2) for point in points for v in point]


def _area(points: Sequence[tuple[float, float]]) -> float:
    # Shoelace: the area of the stored polygon, so area and segmentation agree as in COCO.
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, [*points[1:], points[0]]))
    return round(abs(twice) / 2, 2)


def _build_coco(data: Path, seed: int, n: int) -> list[Scene]:
    rng = _rng(seed, "coco/scenes")
    caption_rng = _rng(seed, "coco/captions")
    ids = sorted(rng.sample(range(1, 600_000), n))  # sparse like real COCO ids, so nothing can assume 1..n
    scenes = [sample_scene(rng, image_id) for image_id in ids]
    image_dir = data / "coco" / "train2017"
    images, instances, caption_anns = [], [], []
    for scene in scenes:
        _save_image(scene, image_dir / coco_file_name(scene.image_id))
        images.append(
            {
                "id": scene.image_id,
                "file_name": coco_file_name(scene.image_id),
                "width": scene.width,
                "height": scene.height,
                "license": LICENSE["id"],
            }
        )
        for shape in scene.shapes:
            outline = shape_outline(shape)
            instances.append(
                {
                    "id": len(instances) + 1,
                    "image_id": scene.image_id,
                    "category_id": SHAPES.index(shape.kind) + 1,
                    "bbox": [float(v) for v in shape.box],
                    "area": _area(outline),
                    "iscrowd": 0,
                    "segmentation": [_polygon(outline)],
                }
            )
        for caption in lang.captions(scene, caption_rng):
            caption_anns.append({"id": len(caption_anns) + 1, "image_id": scene.image_id, "caption": caption})
    info = {
        "description": "FireLLaVA toy world (generated shapes)",
        "version": "1.0",
        "year": 2024,
        "contributor": "firellava.toy",
        "date_created": "2024-01-01",
    }
    categories = [{"id": i + 1, "name": kind, "supercategory": "shape"} for i, kind in enumerate(SHAPES)]
    annotations = data / "coco" / "annotations"
    write_json(
        annotations / "instances_train.json",
        {
            "info": info,
            "licenses": [LICENSE],
            "images": images,
            "annotations": instances,
            "categories": categories,
        },
        indent=None,
    )
    write_json(
        annotations / "captions_train.json",
        {"info": info, "licenses": [LICENSE], "images": images, "annotations": caption_anns},
        indent=None,
    )
    return scenes


# --- LCS-558K-style pretraining data ------------------------------------------------------------------------


def _build_pretrain(pretrain: Path, seed: int, n: int) -> list[dict]:
    rng = _rng(seed, "pretrain")
    records = []
    for index in range(1, n + 1):
        scene = sample_scene(rng, index, with_word=rng.random() < 0.2)
        record_id = f"{index:09d}"
        image = f"{record_id[:5]}/{record_id}.jpg"  # LCS shards by the id's first five digits
        _save_image(scene, pretrain / "images" / image)
        instruction = rng.choice(BRIEF_INSTRUCTIONS)
        prompt = f"{instruction}\n{IMAGE_TOKEN}" if rng.random() < 0.5 else f"{IMAGE_TOKEN}\n{instruction}"
        records.append(
            {
                "id": record_id,
                "image": image,
                "conversations": [
                    {"from": "human", "value": prompt},
                    {"from": "gpt", "value": lang.brief_caption(scene, rng)},
                ],
            }
        )
    write_json(pretrain / "blip_laion_cc_sbu_558k.json", records)
    return records


# --- the ten sources of the mix -----------------------------------------------------------------------------


@dataclass
class _Context:
    data: Path
    coco: list[Scene]
    vqa_questions: dict[str, list[dict]]  # toy VQAv2 / OK-VQA question files, filled as records are made
    vqa_annotations: dict[str, list[dict]]
    llava_instruct: list[dict]


def _coco_cycle(rng: random.Random, ctx: _Context) -> Iterator[Scene]:
    """COCO scenes in a per-source random order, repeating only when the source outnumbers the images."""
    order = rng.sample(ctx.coco, len(ctx.coco))
    while True:
        yield from order


def _coco_image(scene: Scene) -> str:
    return f"coco/train2017/{coco_file_name(scene.image_id)}"


def _llava_instruct(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
    scenes = _coco_cycle(rng, ctx)
    records = []
    for _ in range(n):
        scene = next(scenes)
        # The released mix of conversation 58K / detail 23K / complex reasoning 77K.
        kind = rng.choices(("conversation", "detail", "complex"), weights=(58, 23, 77))[0]
        if kind == "conversation":
            pairs = lang.conversation(scene, rng)
        elif kind == "detail":
            pairs = [lang.detailed_description(scene, rng)]
        else:
            pairs = [lang.complex_reasoning(scene, rng)]
        # LLaVA-Instruct is the source that puts <image> before or after the question at random.
        turns = _turns(pairs, image=True, image_first=rng.random() < 0.5)
        record_id = coco_file_name(scene.image_id)[:-4]
        ctx.llava_instruct.append(
            {"id": record_id, "image": coco_file_name(scene.image_id), "conversations": turns}
        )
        records.append({"id": record_id, "image": _coco_image(scene), "conversations": turns})
    return records


def _sharegpt(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    records, seen = [], set()
    while len(records) < n:
        base = "".join(rng.choice(alphabet) for _ in range(7))
        if base in seen:
            continue
        seen.add(base)
        # FastChat splits long chats into parts "_0", "_1", ...; the mix keeps some later parts.
        record_id = f"{base}_{rng.choice((0, 0, 0, 1, 2))}"
        records.append(
            {"id": record_id, "model": "", "conversations": _turns(lang.text_conversation(rng), image=False)}
        )
    return records


_QUESTION_TYPES = (
    "what color is the",
    "what is the color of the",
    "which color does the",
    "what shape is",
    "what is the shape of the",
    "which shape is",
    "how many",
    "is there a",
    "is there any",
    "do you see a",
    "which fruit",
    "what does a",
    "which shape",
)


def _answer_type(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else "number" if answer.isdigit() else "other"


def _vqa_style(name: str, generators: Sequence[lang.QAGenerator], max_turns: int) -> Callable:
    """VQAv2 / OK-VQA: COCO images, merged QA pairs, and the official question + annotation files."""

    def build(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
        scenes = _coco_cycle(rng, ctx)
        asked: dict[int, int] = {}
        records: list[dict] = []
        for _ in range(20 * n):
            if len(records) == n:
                break
            scene = next(scenes)
            pairs = lang.ask(scene, rng, generators, rng.randint(1, max_turns))
            if not pairs:
                continue
            for question, answer in pairs:
                k = asked.get(scene.image_id, 0)
                asked[scene.image_id] = k + 1
                # VQAv2 numbers questions image_id * 1000 + k, OK-VQA image_id * 10 + k.
                qid = scene.image_id * (1000 if name == "vqav2" else 10) + k
                lowered = question.lower()
                qtype = max(
                    (t for t in _QUESTION_TYPES if lowered.startswith(t)),
                    key=len,
                    default="none of the above",
                )
                ctx.vqa_questions[name].append(
                    {"image_id": scene.image_id, "question": question, "question_id": qid}
                )
                ctx.vqa_annotations[name].append(
                    {
                        "question_type": qtype,
                        "multiple_choice_answer": answer,
                        "answers": [
                            {"answer": answer, "answer_confidence": "yes", "answer_id": i}
                            for i in range(1, 11)
                        ],
                        "image_id": scene.image_id,
                        "answer_type": _answer_type(answer),
                        "question_id": qid,
                    }
                )
            records.append(
                {
                    "id": coco_file_name(scene.image_id)[:-4],
                    "image": _coco_image(scene),
                    "conversations": _turns(pairs, image=True, suffix=SHORT_ANSWER),
                }
            )
        if len(records) < n:
            raise RuntimeError(f"{name}: could only ask questions about {len(records)} of {n} images")
        return records

    return build


def _isbn10(rng: random.Random) -> str:
    """A valid ISBN-10, the form of OCR-VQA's book ids (e.g. 140031996X)."""
    digits = f"{rng.randrange(10**8, 10**9):09d}"
    check = (11 - sum((10 - i) * int(d) for i, d in enumerate(digits)) % 11) % 11
    return digits + ("X" if check == 10 else str(check))


def _unique(rng: random.Random, n: int, make: Callable[[random.Random], str]) -> list[str]:
    out, seen = [], set()
    while len(out) < n:
        value = make(rng)
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def _own_images(
    folder: str,
    make_id: Callable[[random.Random], str],
    generators: Sequence[lang.QAGenerator],
    max_turns: int,
    *,
    with_word: bool = False,
    suffix: str | None = SHORT_ANSWER,
) -> Callable:
    """Sources whose images live in their own folder (GQA, OCR-VQA, TextCaps): one scene per record."""

    def build(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
        records = []
        for index, image_id in enumerate(_unique(rng, n, make_id)):
            pairs: list[lang.QA] = []
            while not pairs:
                scene = sample_scene(rng, index, with_word=with_word)
                pairs = lang.ask(scene, rng, generators, rng.randint(1, max_turns))
            image = f"{folder}/{image_id}.jpg"
            _save_image(scene, ctx.data / image)
            records.append(
                {"id": image_id, "image": image, "conversations": _turns(pairs, image=True, suffix=suffix)}
            )
        return records

    return build


def _textcaps_caption(scene: Scene, rng: random.Random) -> lang.QA:
    return TEXTCAPS_PROMPT, lang.textcaps_caption(scene, rng)


def _a_okvqa(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
    scenes = _coco_cycle(rng, ctx)
    records = []
    for _ in range(n):
        scene = next(scenes)
        item = lang.multiple_choice(scene, rng)
        turns = _turns([(item.prompt(), item.letter)], image=True, suffix=OPTION_LETTER)
        records.append(
            {"id": coco_file_name(scene.image_id)[:-4], "image": _coco_image(scene), "conversations": turns}
        )
    return records


def _refcoco(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
    scenes = _coco_cycle(rng, ctx)
    records: list[dict] = []
    for _ in range(20 * n):
        if len(records) == n:
            break
        scene = next(scenes)
        pairs = lang.ask(scene, rng, REGION_GENERATORS, rng.randint(1, 4))
        if pairs:
            records.append(
                {
                    "id": coco_file_name(scene.image_id)[:-4],
                    "image": _coco_image(scene),
                    "conversations": _turns(pairs, image=True),
                }
            )
    if len(records) < n:
        raise RuntimeError(f"refcoco: could only refer to shapes in {len(records)} of {n} images")
    return records


def _vg_id(rng: random.Random) -> str:
    return f"{rng.choice(('VG_100K', 'VG_100K_2'))}/{rng.randrange(1, 2_420_000)}"


def _vg(rng: random.Random, n: int, ctx: _Context) -> list[dict]:
    records = []
    for index, image_id in enumerate(_unique(rng, n, _vg_id)):
        pairs: list[lang.QA] = []
        while not pairs:
            scene = sample_scene(rng, index)
            pairs = lang.ask(scene, rng, REGION_GENERATORS, rng.randint(2, 6))
        _save_image(scene, ctx.data / "vg" / f"{image_id}.jpg")
        records.append(
            {"id": image_id, "image": f"vg/{image_id}.jpg", "conversations": _turns(pairs, image=True)}
        )
    return records


_BUILDERS: dict[str, Callable[[random.Random, int, _Context], list[dict]]] = {
    "llava_instruct": _llava_instruct,
    "sharegpt": _sharegpt,
    "vqav2": _vqa_style("vqav2", VQA_GENERATORS, 3),
    "gqa": _own_images("gqa/images", lambda r: str(r.randrange(1_000_000, 2_420_000)), GQA_GENERATORS, 4),
    "okvqa": _vqa_style("okvqa", (lang.knowledge_qa,), 2),
    "ocr_vqa": _own_images("ocr_vqa/images", _isbn10, OCR_GENERATORS, 3, with_word=True),
    "a_okvqa": _a_okvqa,
    "textcaps": _own_images(
        "textvqa/train_images",
        lambda r: f"{r.getrandbits(64):016x}",
        (_textcaps_caption,),
        1,
        with_word=True,
        suffix=None,
    ),
    "refcoco": _refcoco,
    "vg": _vg,
}


def _vqa_files(name: str, questions: list[dict], annotations: list[dict]) -> dict[str, Any]:
    info = {"description": f"FireLLaVA toy world: {name} questions on toy COCO images", "version": "1.0"}
    common = {
        "info": info,
        "license": {"name": LICENSE["name"], "url": LICENSE["url"]},
        "data_subtype": "train2014",
    }
    return {
        "questions": {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": questions},
        "annotations": {**common, "annotations": annotations},
    }


# --- entry point --------------------------------------------------------------------------------------------


def _resolve_counts(per_source: dict[str, int]) -> dict[str, int]:
    unknown = sorted(set(per_source) - set(SOURCES))
    if unknown:
        raise ValueError(f"per_source: unknown source(s) {unknown}; valid sources are {list(SOURCES)}")
    counts = {**DEFAULT_PER_SOURCE, **per_source}
    for name in SOURCES:
        if not isinstance(counts[name], int) or counts[name] < 0:
            raise ValueError(f"per_source[{name!r}] must be a non-negative integer, got {counts[name]!r}")
    return {name: counts[name] for name in SOURCES}


def build_toy_data(
    root: Path, *, seed: int, coco_images: int, pretrain_images: int, per_source: dict[str, int]
) -> ToyData:
    """Build the toy world's data under the existing, empty directory `root`.

    `per_source` overrides `DEFAULT_PER_SOURCE` source by source (a count of 0 leaves a source out); keys
    must be names in `SOURCES`. Every image a JSON file references is written before that file.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the toy data directory must exist")
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; the toy data is only ever built into an empty directory")
    counts = _resolve_counts(per_source)
    if coco_images < 0 or pretrain_images < 0:
        raise ValueError(
            f"image counts must be non-negative, got coco_images={coco_images}, "
            f"pretrain_images={pretrain_images}"
        )
    needs_coco = [name for name in COCO_SOURCES if counts[name]]
    if needs_coco and coco_images == 0:
        raise ValueError(f"sources {needs_coco} use COCO images but coco_images=0")

    data = root / "data"
    coco = _build_coco(data, seed, coco_images)
    pretrain = _build_pretrain(root / "pretrain", seed, pretrain_images)
    ctx = _Context(data, coco, {"vqav2": [], "okvqa": []}, {"vqav2": [], "okvqa": []}, [])
    by_source = {name: _BUILDERS[name](_rng(seed, f"mix/{name}"), counts[name], ctx) for name in SOURCES}
    mix = [record for name in SOURCES for record in by_source[name]]
    _rng(seed, "mix/order").shuffle(mix)  # the real file interleaves sources; readers must not rely on blocks

    paths = {}
    for name, (questions_file, annotations_file) in (("vqav2", VQAV2_FILES), ("okvqa", OKVQA_FILES)):
        files = _vqa_files(name, ctx.vqa_questions[name], ctx.vqa_annotations[name])
        paths[name] = (
            write_json(data / name / questions_file, files["questions"], indent=None),
            write_json(data / name / annotations_file, files["annotations"], indent=None),
        )
    llava_instruct_json = write_json(data / "llava_instruct_150k.json", ctx.llava_instruct)
    mix_json = write_json(data / "llava_v1_5_mix665k.json", mix)

    return ToyData(
        root=root,
        coco_instances=data / "coco" / "annotations" / "instances_train.json",
        coco_captions=data / "coco" / "annotations" / "captions_train.json",
        coco_image_dir=data / "coco" / "train2017",
        pretrain_json=root / "pretrain" / "blip_laion_cc_sbu_558k.json",
        pretrain_image_dir=root / "pretrain" / "images",
        mix665k_json=mix_json,
        image_folder=data,
        llava_instruct_json=llava_instruct_json,
        vqav2_questions=paths["vqav2"][0],
        vqav2_annotations=paths["vqav2"][1],
        okvqa_questions=paths["okvqa"][0],
        okvqa_annotations=paths["okvqa"][1],
        counts={
            "coco_images": len(coco),
            "coco_annotations": sum(len(s.shapes) for s in coco),
            "coco_captions": 5 * len(coco),
            "pretrain_records": len(pretrain),
            "mix_records": len(mix),
            "mix_per_source": {name: len(by_source[name]) for name in SOURCES},
            "llava_instruct_records": len(ctx.llava_instruct),
            "vqav2_questions": len(ctx.vqa_questions["vqav2"]),
            "okvqa_questions": len(ctx.vqa_questions["okvqa"]),
        },
        coco_scenes=tuple(coco),
    )
