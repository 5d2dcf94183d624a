"""The toy world's data: real formats, true boxes, all ten mix sources recognizable by their real markers."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from firellava.core.instructions import BRIEF_INSTRUCTIONS, TEXTCAPS_PROMPT
from firellava.toy import language as lang
from firellava.toy.data import DEFAULT_PER_SOURCE, SOURCES, ToyData, build_toy_data
from firellava.toy.scenes import COLOURS, SHAPES, Scene, Shape, draw_scene, sample_scene

PER_SOURCE = {
    "llava_instruct": 8,
    "sharegpt": 5,
    "vqav2": 10,
    "gqa": 8,
    "okvqa": 6,
    "ocr_vqa": 5,
    "a_okvqa": 6,
    "textcaps": 4,
    "refcoco": 6,
    "vg": 5,
}
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
REGION = re.compile(
    r"^(Please provide a short description for this region: \[[\d., ]+\]"
    r"|Please provide the bounding box coordinate of the region this sentence describes: .+)$"
)


def build(root: Path, seed: int = 3, **overrides) -> ToyData:
    root.mkdir(parents=True)
    kwargs = {"coco_images": 10, "pretrain_images": 8, "per_source": PER_SOURCE} | overrides
    return build_toy_data(root, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> ToyData:
    return build(tmp_path_factory.mktemp("toy") / "a")


def load(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def first_question(record: dict) -> str:
    """The first human turn without `<image>` (either placement)."""
    value = record["conversations"][0]["value"]
    return value.removeprefix("<image>\n").removesuffix("\n<image>")


def vqa_pairs(record: dict) -> list[tuple[int, str]]:
    image_id = int(Path(record["image"]).stem)
    questions = [t["value"] for t in record["conversations"][2::2]]
    return [(image_id, q) for q in [first_question(record).removesuffix(SHORT), *questions]]


def classify(record: dict, vqav2: set, okvqa: set) -> str:
    """How LLaVA-1.5's mix tells its sources apart (image folder first, then the text), written independently of
    the generator and of conf/mix/sources/."""
    if "image" not in record:
        return "sharegpt"
    image = record["image"]
    for prefix, source in (
        ("gqa/images/", "gqa"),
        ("ocr_vqa/images/", "ocr_vqa"),
        ("textvqa/train_images/", "textcaps"),
        ("vg/VG_100K", "vg"),
    ):
        if image.startswith(prefix):
            return source
    assert image.startswith("coco/train2017/"), image
    first = first_question(record)
    if first.endswith(LETTER):
        return "a_okvqa"
    if REGION.match(first):
        return "refcoco"
    if first.endswith(SHORT):
        pairs = set(vqa_pairs(record))
        in_v2, in_ok = pairs <= vqav2, pairs <= okvqa
        assert in_v2 != in_ok, f"{record['id']}: VQAv2 {in_v2}, OK-VQA {in_ok}"
        return "vqav2" if in_v2 else "okvqa"
    return "llava_instruct"


def question_set(path: Path) -> set[tuple[int, str]]:
    return {(q["image_id"], q["question"]) for q in load(path)["questions"]}


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- scenes and text ----------------------------------------------------------------------------------------


def test_scenes_are_deterministic_and_boxes_are_exact():
    a = [sample_scene(random.Random(5), i, with_word=i % 3 == 0) for i in range(60)]
    b = [sample_scene(random.Random(5), i, with_word=i % 3 == 0) for i in range(60)]
    assert a == b
    sizes = set()
    for scene in a:
        sizes.add(scene.width == scene.height)
        assert 1 <= len(scene.shapes) <= 3
        pixels = np.asarray(draw_scene(scene))
        for shape in scene.shapes:
            x, y, w, h = shape.box
            assert min(w, h) >= 14
            mask = (pixels == COLOURS[shape.colour]).all(-1)
            window = np.zeros_like(mask)
            window[y : y + h, x : x + w] = True
            ys, xs = np.nonzero(mask & window)
            # The shape's own pixels span exactly its box, and no pixel of its colour leaks out of the box
            # unless another shape of the same colour is there.
            assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == shape.box
            assert mask[y + h // 2, x + w // 2]
    assert sizes == {True, False} or sizes == {False}, "image sizes should often be non-square"


def test_captions_are_five_distinct_and_true():
    rng = random.Random(0)
    for i in range(100):
        scene = sample_scene(rng, i, with_word=i % 4 == 0)
        caps = lang.captions(scene, rng)
        assert len(caps) == 5 and len(set(caps)) == 5
        text = " ".join(caps)
        for shape in scene.shapes:
            assert shape.colour in text and shape.kind in text
        for colour in COLOURS:
            if all(s.colour != colour for s in scene.shapes):
                assert colour not in text
        if scene.word:
            assert sum(scene.word in c for c in caps) >= 3


def test_question_generators_tell_the_truth():
    rng = random.Random(1)
    yes = 0
    for i in range(200):
        scene = sample_scene(rng, i, with_word=True)
        assert lang.count_qa(scene, rng)[1] == str(len(scene.shapes))
        question, answer = lang.exists_qa(scene, rng)
        colour, kind = re.search(r"(\w+) (circle|square|triangle)", question).groups()
        present = any(s.colour == colour and s.kind == kind for s in scene.shapes)
        assert answer == ("yes" if present else "no")
        yes += answer == "yes"
        assert lang.text_qa(scene, rng)[1] == scene.word.lower()
        qa = lang.colour_qa(scene, rng)
        if qa:
            kind = re.search(r"circle|square|triangle", qa[0]).group()
            assert [s.colour for s in scene.shapes if s.kind == kind] == [qa[1]]
        item = lang.multiple_choice(scene, rng)
        assert len(item.choices) == 4 and len(set(item.choices)) == 4 and item.letter in "ABCD"
    assert 70 <= yes <= 130, "yes/no answers should be balanced"
    assert len(BRIEF_INSTRUCTIONS) == 11 and len(set(BRIEF_INSTRUCTIONS)) == 11


def test_bound_existence_says_no_only_where_both_words_are_in_the_scene_apart():
    rng = random.Random(2)
    answers = {"yes": 0, "no": 0}
    for i in range(300):
        scene = sample_scene(rng, i)
        qa = lang.exists_bound_qa(scene, rng)
        if qa is None:  # no colour and kind of the scene that sit on different shapes only
            assert {(s.colour, o.kind) for s in scene.shapes for o in scene.shapes} == {
                (s.colour, s.kind) for s in scene.shapes
            }
            continue
        colour, kind = re.search(r"(\w+) (circle|square|triangle)", qa[0]).groups()
        assert any(s.colour == colour for s in scene.shapes) and any(s.kind == kind for s in scene.shapes)
        bound = any(s.colour == colour and s.kind == kind for s in scene.shapes)
        assert qa[1] == ("yes" if bound else "no")
        answers[qa[1]] += 1
    assert min(answers.values()) > 0.35 * sum(answers.values()), answers


def test_kind_first_captions_name_each_kind_then_its_colour_left_to_right():
    right = Shape("triangle", "blue", (30, 1, 14, 14))
    left = Shape("circle", "red", (1, 1, 14, 14))
    assert lang.kind_first_caption(Scene(1, 64, 48, (right, left))) == "circle red, triangle blue"


def test_bound_colour_questions_name_a_shape_beside_another_colour():
    rng = random.Random(3)
    asked = 0
    for i in range(300):
        scene = sample_scene(rng, i)
        qa = lang.colour_bound_qa(scene, rng)
        if qa is None:
            assert all(
                sum(o.kind == s.kind for o in scene.shapes) > 1
                or {o.colour for o in scene.shapes} == {s.colour}
                for s in scene.shapes
            )
            continue
        kind = re.search(r"circle|square|triangle", qa[0]).group()
        assert [s.colour for s in scene.shapes if s.kind == kind] == [qa[1]]
        assert any(s.colour != qa[1] for s in scene.shapes)
        asked += 1
    assert asked > 60, asked


# --- files --------------------------------------------------------------------------------------------------


def test_coco_files_load_with_pycocotools(toy):
    instances, captions = COCO(str(toy.coco_instances)), COCO(str(toy.coco_captions))
    assert sorted(instances.getImgIds()) == sorted(captions.getImgIds())
    assert len(instances.getImgIds()) == toy.counts["coco_images"] == 10
    assert [c["name"] for c in instances.loadCats(instances.getCatIds())] == list(SHAPES)
    for image_id in captions.getImgIds():
        assert len(captions.getAnnIds(imgIds=[image_id])) == 5
        assert 1 <= len(instances.getAnnIds(imgIds=[image_id])) <= 3
    for ann in instances.loadAnns(instances.getAnnIds()):
        assert ann["iscrowd"] == 0 and ann["area"] > 0 and all(isinstance(v, float) for v in ann["bbox"])
        assert instances.annToMask(ann).sum() > 0


def test_coco_boxes_match_the_drawn_pixels(toy):
    instances, captions = COCO(str(toy.coco_instances)), COCO(str(toy.coco_captions))
    background_min = (
        200  # every background tint has all channels above this; every shape colour has one below
    )
    for ann in instances.loadAnns(instances.getAnnIds()):
        info = instances.imgs[ann["image_id"]]
        pixels = np.asarray(Image.open(toy.coco_image_dir / info["file_name"]).convert("RGB")).astype(int)
        assert pixels.shape[:2] == (info["height"], info["width"])
        x, y, w, h = (int(v) for v in ann["bbox"])
        centre = pixels[y + h // 2, x + w // 2]
        colour = min(COLOURS, key=lambda c: np.abs(centre - COLOURS[c]).max())
        assert np.abs(centre - COLOURS[colour]).max() < 40, "box centre is not a shape colour"
        kind = instances.cats[ann["category_id"]]["name"]
        text = " ".join(a["caption"] for a in captions.loadAnns(captions.getAnnIds(imgIds=[ann["image_id"]])))
        assert colour in text and kind in text
        for ox, oy in (
            (x - 2, y + h // 2),
            (x + w + 1, y + h // 2),
            (x + w // 2, y - 2),
            (x + w // 2, y + h + 1),
        ):
            if 0 <= ox < info["width"] and 0 <= oy < info["height"]:
                assert pixels[oy, ox].min() > background_min, "pixels just outside a box must be background"


def test_same_seed_gives_identical_files(toy, tmp_path):
    again = build(tmp_path / "b")
    assert file_hashes(toy.root) == file_hashes(again.root)
    other = build(tmp_path / "c", seed=4)
    assert file_hashes(toy.root) != file_hashes(other.root)


def test_one_count_does_not_reshuffle_other_sources(toy, tmp_path):
    changed = build(tmp_path / "d", per_source=PER_SOURCE | {"vqav2": 3})
    v2, ok = question_set(toy.vqav2_questions), question_set(toy.okvqa_questions)
    before = [r for r in load(toy.mix665k_json) if classify(r, v2, ok) != "vqav2"]
    v2, ok = question_set(changed.vqav2_questions), question_set(changed.okvqa_questions)
    after = [r for r in load(changed.mix665k_json) if classify(r, v2, ok) != "vqav2"]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, before)) == sorted(map(key, after))


def test_all_ten_sources_recognizable_by_their_markers(toy):
    mix = load(toy.mix665k_json)
    v2, ok = question_set(toy.vqav2_questions), question_set(toy.okvqa_questions)
    assert not v2 & ok
    found: dict[str, int] = {}
    for record in mix:
        assert "source" not in record
        found[classify(record, v2, ok)] = found.get(classify(record, v2, ok), 0) + 1
    assert found == PER_SOURCE == toy.counts["mix_per_source"]
    assert toy.counts["mix_records"] == len(mix) == sum(PER_SOURCE.values())
    # Every question in the reference files was used by some record, and nothing else was asked.
    used = {pair for r in mix if classify(r, v2, ok) in ("vqav2", "okvqa") for pair in vqa_pairs(r)}
    assert used == v2 | ok


def test_source_specific_formats(toy):
    v2, ok = question_set(toy.vqav2_questions), question_set(toy.okvqa_questions)
    by_source: dict[str, list[dict]] = {}
    for record in load(toy.mix665k_json):
        by_source.setdefault(classify(record, v2, ok), []).append(record)
    for record in by_source["sharegpt"]:
        assert re.fullmatch(r"[A-Za-z0-9]{7}_\d+", record["id"]) and record["model"] == ""
    for record in by_source["llava_instruct"] + by_source["vqav2"] + by_source["a_okvqa"]:
        assert (
            re.fullmatch(r"\d{12}", record["id"]) and record["image"] == f"coco/train2017/{record['id']}.jpg"
        )
    for record in by_source["ocr_vqa"]:
        assert (
            re.fullmatch(r"\d{9}[\dX]", record["id"])
            and record["image"] == f"ocr_vqa/images/{record['id']}.jpg"
        )
    for record in by_source["textcaps"]:
        assert re.fullmatch(r"[0-9a-f]{16}", record["id"])
        assert first_question(record) == TEXTCAPS_PROMPT and len(record["conversations"]) == 2
    for record in by_source["vg"]:
        assert re.fullmatch(r"VG_100K(_2)?/\d+", record["id"]) and record["image"] == f"vg/{record['id']}.jpg"
    for record in by_source["a_okvqa"]:
        assert re.search(r"\nA\. .+\nB\. .+\nC\. .+\nD\. .+\n", first_question(record))
        assert (
            record["conversations"][1]["value"] in ("A", "B", "C", "D") and len(record["conversations"]) == 2
        )
    for source in ("vqav2", "okvqa", "gqa", "ocr_vqa"):
        for record in by_source[source]:
            humans = [t["value"] for t in record["conversations"][0::2]]
            assert humans[0].endswith(SHORT) and not any(SHORT.strip() in h for h in humans[1:])
    for source in ("refcoco", "vg"):
        for record in by_source[source]:
            assert all(
                REGION.match(t["value"].removeprefix("<image>\n")) for t in record["conversations"][0::2]
            )
    assert {r["conversations"][0]["value"].startswith("<image>\n") for r in by_source["llava_instruct"]} == {
        True,
        False,
    } or len(by_source["llava_instruct"]) < 4


def test_region_boxes_are_coco_boxes_on_the_padded_square(toy):
    instances = COCO(str(toy.coco_instances))
    refcoco = [
        r
        for r in load(toy.mix665k_json)
        if "image" in r and r["image"].startswith("coco/") and REGION.match(first_question(r))
    ]
    checked = 0
    for record in refcoco:
        image_id = int(Path(record["image"]).stem)
        info = instances.imgs[image_id]
        side = max(info["width"], info["height"])
        ox, oy = (side - info["width"]) // 2, (side - info["height"]) // 2
        boxes = []
        for ann in instances.loadAnns(instances.getAnnIds(imgIds=[image_id])):
            x, y, w, h = ann["bbox"]
            boxes.append([round(v / side, 2) for v in (x + ox, y + oy, x + ox + w, y + oy + h)])
        turns = record["conversations"]
        for human, gpt in zip(turns[0::2], turns[1::2]):
            box_text = gpt["value"] if "bounding box" in human["value"] else human["value"].rsplit(": ", 1)[1]
            assert json.loads(box_text) in boxes
            checked += 1
    assert checked >= len(refcoco) > 0


def test_image_token_once_in_first_human_turn(toy):
    records = load(toy.mix665k_json) + load(toy.llava_instruct_json)
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        text = [t["value"] for t in turns]
        if "image" not in record:
            assert not any("<image>" in v for v in text)
            continue
        assert sum(v.count("<image>") for v in text) == 1
        assert text[0].startswith("<image>\n") or text[0].endswith("\n<image>")
    for record in load(toy.pretrain_json):
        human = record["conversations"][0]["value"]
        assert human.count("<image>") == 1
        assert human.replace("<image>", "").strip() in BRIEF_INSTRUCTIONS


def test_every_referenced_image_exists_and_decodes(toy):
    references = [toy.image_folder / r["image"] for r in load(toy.mix665k_json) if "image" in r]
    references += [toy.coco_image_dir / r["image"] for r in load(toy.llava_instruct_json)]
    references += [toy.pretrain_image_dir / r["image"] for r in load(toy.pretrain_json)]
    references += [toy.coco_image_dir / i["file_name"] for i in load(toy.coco_instances)["images"]]
    for path in sorted(set(references)):
        with Image.open(path) as image:
            image.load()
            assert image.mode == "RGB" and min(image.size) >= 48
    pretrain = load(toy.pretrain_json)
    assert len(pretrain) == toy.counts["pretrain_records"] == 8
    assert all(
        re.fullmatch(r"\d{9}", r["id"]) and r["image"] == f"{r['id'][:5]}/{r['id']}.jpg" for r in pretrain
    )


def test_llava_instruct_reference_file_matches_the_mix(toy):
    mix = {json.dumps(r, sort_keys=True) for r in load(toy.mix665k_json)}
    for record in load(toy.llava_instruct_json):
        assert "/" not in record["image"]
        assert json.dumps(record | {"image": f"coco/train2017/{record['image']}"}, sort_keys=True) in mix


def test_vqa_reference_files_use_the_official_format(toy):
    for questions_path, annotations_path in (
        (toy.vqav2_questions, toy.vqav2_annotations),
        (toy.okvqa_questions, toy.okvqa_annotations),
    ):
        questions, annotations = load(questions_path)["questions"], load(annotations_path)["annotations"]
        assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
        assert len({q["question_id"] for q in questions}) == len(questions)
        for q, a in zip(questions, annotations):
            assert q["image_id"] == a["image_id"] and len(a["answers"]) == 10
            assert a["multiple_choice_answer"] == a["answers"][0]["answer"]


def test_summary_is_json(toy):
    summary = json.loads(json.dumps(toy.summary()))
    assert summary["mix665k_json"] == str(toy.mix665k_json) and summary["counts"]["mix_records"] > 0
    assert Path(summary["image_folder"]).is_dir()


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        build(tmp_path / "x", per_source={"vqav2": 1, "laion": 3})
    with pytest.raises(ValueError, match="non-negative"):
        build(tmp_path / "y", per_source={"vqav2": -1})
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("")
    with pytest.raises(FileExistsError):
        build_toy_data(tmp_path / "z", seed=0, coco_images=1, pretrain_images=1, per_source={})


def test_defaults_cover_every_source():
    assert tuple(DEFAULT_PER_SOURCE) == SOURCES and len(SOURCES) == 10
    assert all(count > 0 for count in DEFAULT_PER_SOURCE.values())
