"""Toy instances of every benchmark, in each benchmark's own files, so the real loaders read them unchanged.

Scenes come from the toy world's generator on their own random streams and image ids (900000 and up, apart from
the training COCO ids), and the questions from its question generators, so every ground truth is true by
construction. A model trained on the toy mix should score far above chance on the short-answer and yes/no ones.

A few are training scenes on purpose (`shared`), as real benchmarks share images with training data: POPE shows
two training COCO images under their val2014 names (the same COCO id), and MM-Vet one re-encoded under its own
name (only a perceptual hash finds it); the mix's decontamination must find and remove them.
"""

from __future__ import annotations

import base64
import csv
import io
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.core.instructions import OPTION_LETTER, SHORT_ANSWER
from firellava.core.io import read_json, write_json, write_jsonl
from firellava.eval.benchmarks.choice import CIRCULAR_STRIDE
from firellava.eval.benchmarks.yesno import MME_INSTRUCTION, POPE_SPLITS
from firellava.toy import language as lang
from firellava.toy.scenes import COLOURS, SHAPES, WORDS, Scene, draw_scene, sample_scene

# LLaVA's llava_pope_test.jsonl question ids, per category (the label files start at 1 each)
POPE_QUESTION_ID_BASE = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
FIRST_IMAGE_ID = 900_000
VQA_GENERATORS = (lang.colour_qa, lang.shape_qa, lang.count_qa, lang.count_kind_qa, lang.exists_qa)
GQA_GENERATORS = (lang.relation_qa, lang.relative_shape_qa, lang.both_qa, lang.colour_qa, lang.exists_qa)
NUMBER_WORDS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four"}


SHARED_JPEG_QUALITY = 80  # a training scene shown under another name is re-encoded, as a copy found online is


class _World:
    def __init__(self, seed: int, name: str, shared: Sequence[Scene] = ()) -> None:
        self.rng = random.Random(f"eval-toy/{seed}/{name}")
        self.next_id = FIRST_IMAGE_ID + 10_000 * sorted(WRITERS).index(name)
        self.shared = list(shared)  # training scenes this benchmark reuses

    def scene(self, with_word: bool = False) -> Scene:
        self.next_id += 1
        return sample_scene(self.rng, self.next_id, with_word=with_word)

    def qa(self, generators: Sequence[lang.QAGenerator], with_word: bool = False) -> tuple[Scene, str, str]:
        while True:
            scene = self.scene(with_word)
            qa = self.rng.choice(generators)(scene, self.rng)
            if qa is not None:
                return scene, qa[0], qa[1]


def _save(scene: Scene, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        draw_scene(scene).save(path, format="PNG")
    else:
        draw_scene(scene).save(path, format="JPEG", quality=95, subsampling=0)


def _human_answers(answer: str, rng: random.Random) -> list[str]:
    """Ten annotators; for numbers some write the word, as real VQA annotators do."""
    if answer in NUMBER_WORDS:
        k = rng.randint(0, 3)
        return [answer] * (10 - k) + [NUMBER_WORDS[answer]] * k
    return [answer] * 10


def vqav2(root: Path, w: _World, n: int) -> None:
    questions, annotations = [], []
    for i in range(n):
        scene, q, a = w.qa(VQA_GENERATORS)
        _save(scene, root / "val2014" / f"COCO_val2014_{scene.image_id:012d}.jpg")
        qid = scene.image_id * 1000 + i % 1000
        questions.append({"image_id": scene.image_id, "question": q, "question_id": qid})
        answers = [
            {"answer": x, "answer_confidence": "yes", "answer_id": j + 1}
            for j, x in enumerate(_human_answers(a, w.rng))
        ]
        annotations.append(
            {
                "question_id": qid,
                "image_id": scene.image_id,
                "question_type": " ".join(q.lower().split()[:2]),
                "answer_type": "yes/no" if a in ("yes", "no") else "number" if a.isdigit() else "other",
                "multiple_choice_answer": a,
                "answers": answers,
            }
        )
    write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions}, indent=None)
    write_json(root / "v2_mscoco_val2014_annotations.json", {"annotations": annotations}, indent=None)


def gqa(root: Path, w: _World, n: int) -> None:
    rows, truth = [], {}
    for i in range(n):
        scene, q, a = w.qa(GQA_GENERATORS)
        image_id = f"n{scene.image_id}"
        _save(scene, root / "images" / f"{image_id}.jpg")
        qid = f"{20_000_000 + i}"
        rows.append(
            {
                "question_id": qid,
                "image": f"{image_id}.jpg",
                "text": f"{q}\n{SHORT_ANSWER}",
                "category": "gqa",
            }
        )
        truth[qid] = {"imageId": image_id, "question": q, "answer": a, "fullAnswer": a, "isBalanced": True}
    write_jsonl(root / "llava_gqa_testdev_balanced.jsonl", rows)
    write_json(root / "testdev_balanced_questions.json", truth, indent=None)


def vizwiz(root: Path, w: _World, n: int) -> None:
    records = []
    for i in range(n):
        scene, q, a = w.qa(VQA_GENERATORS)
        image = f"VizWiz_val_{i:08d}.jpg"
        _save(scene, root / "val" / image)
        answers = [{"answer": x, "answer_confidence": "yes"} for x in _human_answers(a, w.rng)]
        answer_type = "yes/no" if a in ("yes", "no") else "number" if a.isdigit() else "other"
        records.append(
            {"image": image, "question": q, "answers": answers, "answer_type": answer_type, "answerable": 1}
        )
    write_json(root / "val.json", records, indent=None)


def textvqa(root: Path, w: _World, n: int) -> None:
    """LLaVA's layout: in `llava_textvqa_val_v051_ocr.jsonl` the question_id is the image id, and every third
    question asks about the previous image again, so ids repeat as they do in the real file."""
    rows, data = [], []
    scene, image_id, q = None, "", ""
    for i in range(n):
        if i % 3 == 1:
            first = q
            while q == first:  # another phrasing about the same word
                q, a = lang.text_qa(scene, w.rng)
        else:
            scene, q, a = w.qa((lang.text_qa,), with_word=True)
            image_id = f"{w.rng.getrandbits(64):016x}"
            _save(scene, root / "train_images" / f"{image_id}.jpg")
        ocr = [scene.word]  # the toy's OCR system reads every word right
        text = f"{q}\nReference OCR token: {', '.join(ocr)}\n{SHORT_ANSWER}"
        rows.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
        data.append(
            {
                "question_id": 40_000 + i,
                "question": q,
                "image_id": image_id,
                "answers": [a] * 10,
                "image_classes": [],
            }
        )
    write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", rows)
    write_json(
        root / "TextVQA_0.5.1_val.json",
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data},
        indent=None,
    )


def pope(root: Path, w: _World, n: int) -> None:
    """POPE's three ways to pick absent objects, in toy terms: uniformly (random), the phrases most frequent
    in the set (popular), and look-alikes of a present shape, same kind in another colour (adversarial).
    Written as LLaVA's files are: each label file numbers its questions 1..N, and `llava_pope_test.jsonl`
    numbers them per category from `POPE_QUESTION_ID_BASE`, in the same order (the scorer pairs by position)."""
    per_split = max(2, n // len(POPE_SPLITS))
    scenes = [w.scene() for _ in range(max(1, per_split // 2))]
    scenes[: len(w.shared)] = w.shared[: len(scenes)]  # training COCO images, under their val2014 names
    frequency = Counter(lang.phrase(s) for sc in scenes for s in sc.shapes)
    rows: dict[str, list[dict]] = {}
    for split in POPE_SPLITS:
        labels, rows[split] = [], []
        for k in range(per_split):
            scene = scenes[(k // 2) % len(scenes)]
            image = f"COCO_val2014_{scene.image_id:012d}.jpg"
            _save(scene, root / "val2014" / image)
            present = sorted({lang.phrase(s) for s in scene.shapes})
            absent = [f"{c} {k_}" for c in COLOURS for k_ in SHAPES if f"{c} {k_}" not in present]
            if k % 2 == 0:
                obj, label = w.rng.choice(present), "yes"
            elif split == "random":
                obj, label = w.rng.choice(absent), "no"
            elif split == "popular":
                obj, label = max(absent, key=lambda p: (frequency[p], p)), "no"
            else:
                kinds = {s.kind for s in scene.shapes}
                obj, label = w.rng.choice([p for p in absent if p.split()[1] in kinds] or absent), "no"
            q = f"Is there {lang.a(obj)} in the image?"
            labels.append({"question_id": k + 1, "image": image, "text": q, "label": label})
            rows[split].append(
                {
                    "question_id": POPE_QUESTION_ID_BASE[split] + k + 1,
                    "image": image,
                    "text": f"{q}\n{SHORT_ANSWER}",
                    "category": split,
                }
            )
        write_jsonl(root / "coco" / f"coco_pope_{split}.json", labels)
    in_id_order = sorted(POPE_SPLITS, key=POPE_QUESTION_ID_BASE.__getitem__)
    write_jsonl(root / "llava_pope_test.jsonl", [r for split in in_id_order for r in rows[split]])


def _mme_pairs(scene: Scene, subtask: str, rng: random.Random) -> list[tuple[str, str]] | None:
    unique = [s for s in scene.shapes if sum(o.kind == s.kind for o in scene.shapes) == 1]
    if subtask == "existence":
        present = lang.phrase(rng.choice(scene.shapes))
        absent = rng.choice(
            [
                f"{c} {k}"
                for c in COLOURS
                for k in SHAPES
                if all(lang.phrase(s) != f"{c} {k}" for s in scene.shapes)
            ]
        )
        return [
            (f"Is there {lang.a(present)} in this image?", "Yes"),
            (f"Is there {lang.a(absent)} in this image?", "No"),
        ]
    if subtask == "count":
        n = len(scene.shapes)
        wrong = rng.choice([m for m in (n - 1, n + 1) if m > 0])
        return [
            (f"Are there {n} shapes in this image?", "Yes"),
            (f"Are there {wrong} shapes in this image?", "No"),
        ]
    if subtask == "color" and unique:
        s = rng.choice(unique)
        other = rng.choice([c for c in COLOURS if c != s.colour])
        return [(f"Is the {s.kind} {s.colour}?", "Yes"), (f"Is the {s.kind} {other}?", "No")]
    if subtask == "position" and len(unique) >= 2:
        a_, b_ = rng.sample(unique, 2)
        dx, _ = lang.gaps(a_.box, b_.box)
        if dx:
            right = "to the left of" if dx > 0 else "to the right of"
            wrong = "to the right of" if dx > 0 else "to the left of"
            return [
                (f"Is the {a_.kind} {right} the {b_.kind}?", "Yes"),
                (f"Is the {a_.kind} {wrong} the {b_.kind}?", "No"),
            ]
    if subtask == "OCR" and scene.word:
        other = rng.choice([x for x in WORDS if x != scene.word])
        return [
            (f'Is the word in the image "{scene.word}"?', "Yes"),
            (f'Is the word in the image "{other}"?', "No"),
        ]
    if subtask == "commonsense_reasoning" and unique:
        s = rng.choice(unique)
        other = rng.choice([f for c, f in lang.FRUITS.items() if c != s.colour])
        return [
            (f"Does the {s.kind} have the same color as {lang.a(lang.FRUITS[s.colour])}?", "Yes"),
            (f"Does the {s.kind} have the same color as {lang.a(other)}?", "No"),
        ]
    return None


def mme(root: Path, w: _World, n: int) -> None:
    subtasks = ("existence", "count", "position", "color", "OCR", "commonsense_reasoning")
    for i in range(max(1, n // 2)):
        subtask = subtasks[i % len(subtasks)]
        while True:
            scene = w.scene(with_word=subtask == "OCR")
            pairs = _mme_pairs(scene, subtask, w.rng)
            if pairs:
                break
        name = f"{scene.image_id}"
        _save(scene, root / subtask / f"{name}.jpg")
        # some real MME lines put two spaces before the instruction; LLaVA's prompts drop both
        gap = "  " if i % 3 == 0 else " "
        text = "".join(f"{q}{gap}{MME_INSTRUCTION}\t{a}\n" for q, a in pairs)
        (root / subtask / f"{name}.txt").write_text(text, encoding="utf-8")


def _b64(scene: Scene) -> str:
    buf = io.BytesIO()
    draw_scene(scene).save(buf, format="JPEG", quality=95, subsampling=0)
    return base64.b64encode(buf.getvalue()).decode()


def _category(question: str) -> str:
    q = question.lower()
    return (
        "object_counting"
        if q.startswith("how many")
        else "attribute_recognition"
        if "color" in q
        else "object_recognition"
    )


def mmbench(root: Path, w: _World, n: int) -> None:
    """Both MMBench files; each base question also appears in its three circular rotations (the CN file asks
    the toy's English questions with the Chinese instruction: the toy world has no Chinese)."""
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category", "comment", "split"]  # fmt: skip
    for file in ("mmbench_dev_20230712.tsv", "mmbench_dev_cn_20231003.tsv"):
        rows = []
        for i in range(max(1, n // 4)):
            scene = w.scene()
            item = lang.multiple_choice(scene, w.rng)
            image = _b64(scene)
            hint = "The picture shows simple shapes." if i % 3 == 0 else ""
            for k in range(4):
                choices = item.choices[k:] + item.choices[:k]
                answer = "ABCD"[choices.index(item.choices[item.answer_index])]
                rows.append(
                    [
                        k * CIRCULAR_STRIDE + i,
                        item.question,
                        hint,
                        *choices,
                        answer,
                        _category(item.question),
                        image,
                        "toy",
                        "perception",
                        "",
                        "dev",
                    ]  # fmt: skip
                )
        root.mkdir(parents=True, exist_ok=True)
        with (root / file).open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t")
            writer.writerow(header)
            writer.writerows(rows)


def scienceqa(root: Path, w: _World, n: int) -> None:
    problems, llava, ids = {}, [], []
    for i in range(n):
        pid = str(5000 + i)
        with_image = i % 6 != 5  # a few text-only problems, which SQA-IMG leaves out
        if with_image:
            scene = w.scene()
            item = lang.multiple_choice(scene, w.rng)
            _save(scene, root / "images" / "test" / pid / "image.png")
            image = "image.png"
        else:
            kind, sides = w.rng.choice([("triangle", "3"), ("square", "4")])
            choices = tuple(w.rng.sample(["2", "3", "4", "5", "6"], 3))
            choices = choices if sides in choices else (*choices[:2], sides)
            item = lang.MultipleChoice(f"How many sides does a {kind} have?", choices, choices.index(sides))
            image = None
        hint = "Look at the picture." if with_image and i % 2 else ""
        problems[pid] = {
            "question": item.question, "choices": list(item.choices), "answer": item.answer_index, "hint": hint,
            "image": image, "task": "closed choice", "subject": "toy", "split": "test",
        }  # fmt: skip
        value = (f"Context: {hint}\n" if hint else "") + item.prompt()
        record = {"id": pid, "conversations": [{"from": "human", "value": (f"{IMAGE_TOKEN}\n" if image else "") + value},
                                              {"from": "gpt", "value": f"The answer is {item.letter}."}]}  # fmt: skip
        if image:
            record["image"] = f"{pid}/image.png"
        llava.append(record)
        ids.append(pid)
    write_json(root / "problems.json", problems)
    write_json(root / "pid_splits.json", {"test": ids})
    write_json(root / "llava_test_CQM-A.json", llava)


def seed_bench(root: Path, w: _World, n: int) -> None:
    types = {"Instance Attributes": 2, "Instance Identity": 3, "Instances Counting": 5}
    questions, rows = [], []
    for i in range(n):
        scene = w.scene()
        item = lang.multiple_choice(scene, w.rng)
        data_id = f"{scene.image_id}.jpg"
        _save(scene, root / "SEED-Bench-image" / data_id)
        cat = _category(item.question)
        type_id = types["Instances Counting" if cat == "object_counting" else "Instance Attributes" if cat == "attribute_recognition" else "Instance Identity"]  # fmt: skip
        qid = str(100_000 + i)
        choices = dict(zip(("choice_a", "choice_b", "choice_c", "choice_d"), item.choices))
        questions.append({"question_id": qid, "question": item.question, **choices, "answer": item.letter,
                          "data_id": data_id, "data_type": "image", "question_type_id": type_id})  # fmt: skip
        rows.append({"question_id": qid, "image": f"SEED-Bench-image/{data_id}",
                     "text": f"{item.prompt()}\n{OPTION_LETTER}", "category": cat})  # fmt: skip
    write_json(root / "SEED-Bench.json", {"question_type": types, "questions": questions}, indent=None)
    write_jsonl(root / "llava-seed-bench.jsonl", rows)


def llava_bench(root: Path, w: _World, n: int) -> None:
    """Conversation, detail and complex questions; the reference answers are the toy's true long answers."""
    questions, context, references = [], [], []
    makers: dict[str, Callable[[Scene], tuple[str, str]]] = {
        "conv": lambda s: w.rng.choice(lang.conversation(s, w.rng)),
        "detail": lambda s: lang.detailed_description(s, w.rng),
        "complex": lambda s: lang.complex_reasoning(s, w.rng),
    }
    scene = None
    for i in range(n):
        if i % 3 == 0:
            scene = w.scene()
            image = f"{scene.image_id:03d}.jpg"
            _save(scene, root / "images" / image)
            context.append(
                {"id": str(scene.image_id), "image": image, "caption": "\n".join(lang.captions(scene, w.rng))}
            )
        category = ("conv", "detail", "complex")[i % 3]
        q, a = makers[category](scene)
        questions.append({"question_id": i, "image": image, "text": q, "category": category})
        references.append({"question_id": i, "text": a, "answer_id": f"ref-{i}", "model_id": "toy-reference"})
    write_jsonl(root / "questions.jsonl", questions)
    write_jsonl(root / "context.jsonl", context)
    write_jsonl(root / "answers_gpt4.jsonl", references)


def mm_vet(root: Path, w: _World, n: int) -> None:
    capabilities = {
        lang.colour_qa: ["rec"],
        lang.count_qa: ["rec"],
        lang.text_qa: ["ocr"],
        lang.relation_qa: ["spat", "rec"],
    }
    records = {}
    for i in range(n):
        gen = list(capabilities)[i % len(capabilities)]
        scene, q, a = w.qa((gen,), with_word=gen is lang.text_qa)
        image = f"v1_{i}.jpg"
        # A training scene, re-encoded under MM-Vet's name, asked what the first generator that can asks.
        shared = (
            next(((g, qa) for g in capabilities if (qa := g(w.shared[i], w.rng)) is not None), None)
            if i < len(w.shared)
            else None
        )
        if shared is not None:
            scene, gen, (q, a) = w.shared[i], shared[0], shared[1]
            path = root / "images" / image
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_scene(scene).save(path, format="JPEG", quality=SHARED_JPEG_QUALITY)
        else:
            _save(scene, root / "images" / image)
        records[f"v1_{i}"] = {"imagename": image, "question": q, "answer": a, "capability": capabilities[gen]}
    write_json(root / "mm-vet.json", records)


WRITERS: dict[str, Callable[[Path, _World, int], None]] = {
    "vqav2": vqav2, "gqa": gqa, "vizwiz": vizwiz, "textvqa": textvqa, "pope": pope, "mme": mme,
    "mmbench": mmbench, "scienceqa_img": scienceqa, "seed_bench": seed_bench, "llava_bench": llava_bench,
    "mm_vet": mm_vet,
}  # fmt: skip
WRITER_OF = {"mmbench_cn": "mmbench"}  # both MMBench files come from one writer


SHARED_WITH = {"pope": slice(0, 2), "mm_vet": slice(2, 3)}  # which of `shared` each benchmark reuses


def write_toy_benchmarks(
    root: str | Path, names: Sequence[str], *, seed: int, questions: int, shared: Sequence[Scene] = ()
) -> dict[str, str]:
    """Write each named benchmark's toy files under `root/<its dirname>` (skipping ones already written).
    `shared`: training scenes to reuse (the first two in POPE, the third in MM-Vet; see the module doc)."""
    from firellava.eval.benchmarks import BENCHMARKS

    root = Path(root)
    written = {}
    for name in dict.fromkeys(WRITER_OF.get(n, n) for n in names):
        folder = root / BENCHMARKS[name].dirname
        marker = folder / ".toy_complete"
        if not marker.exists():
            reused = list(shared)[SHARED_WITH[name]] if name in SHARED_WITH else []
            WRITERS[name](folder, _World(seed, name, reused), questions)
            write_json(marker, {"seed": seed, "questions": questions}, indent=None)
        elif read_json(marker) != {"seed": seed, "questions": questions}:
            raise FileExistsError(
                f"{folder} holds toy {name} data of another seed/size; delete it to rebuild"
            )
        written[name] = str(folder)
    return written
