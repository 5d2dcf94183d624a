"""Short-answer benchmarks: VQAv2, VizWiz, TextVQA (VQA accuracy) and GQA (exact match)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firellava.core.instructions import SHORT_ANSWER
from firellava.core.io import write_json
from firellava.eval.benchmarks.base import (
    UNANSWERABLE,
    Benchmark,
    BenchmarkDataError,
    Question,
    field_of,
    mean,
    read_json_file,
    read_jsonl,
    require_answers,
)
from firellava.eval.normalize import evalai_normalize, m4c_vqa_accuracy, official_vqa_accuracy


def llava_question_file(path: Path, image_dir: Path) -> list[Question]:
    """LLaVA's question jsonl: {question_id, image, text, category}; `text` already holds the suffix."""
    out = []
    for lineno, rec in read_jsonl(path):
        where = f"{path}:{lineno}"
        out.append(
            Question(
                qid=str(field_of(rec, "question_id", where)),
                text=field_of(rec, "text", where),
                image=image_dir / field_of(rec, "image", where),
                meta={
                    "question_id": rec["question_id"],
                    "image": rec["image"],
                    "category": rec.get("category"),
                },
            )
        )
    return out


def _per_type(questions: Sequence[Question], accs: Sequence[float], key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for q, acc in zip(questions, accs):
        groups[str(q.meta.get(key))].append(acc)
    return {k: round(100 * mean(v), 2) for k, v in sorted(groups.items())}


class VQAv2(Benchmark):
    """VQAv2. LLaVA-1.5 reports test-dev, scored by the EvalAI server: the `test-dev` split writes LLaVA's
    `convert_vqav2_for_submission.py` file (EvalAI-normalized answers, "" for unanswered test2015 questions).
    The `val` split is scored here with the current official `vqaEval.py` (the 2021 version the server runs:
    both sides processed when the human answers differ, both raw when all ten agree) after the same EvalAI
    normalization of the prediction that the submission applies. lmms-eval's `vqav2_val` runs its EvalAI
    processor on the human answers in every case, so it also matches a normalized prediction against ten
    identical unnormalized answers, where the official code does not."""

    name, title, metric, published = "vqav2", "VQAv2", "VQA accuracy", 80.0
    dirname = "vqav2"
    llava_answers = {"test-dev": "vqav2/answers/llava_vqav2_mscoco_test-dev2015/{model}/merge.jsonl"}
    splits = ("val", "test-dev")
    server_splits = ("test-dev",)

    def load(self) -> list[Question]:
        if self.split == "test-dev":
            return llava_question_file(
                self.file("llava_vqav2_mscoco_test-dev2015.jsonl"), self.root / "test2015"
            )
        qpath = self.file("v2_OpenEnded_mscoco_val2014_questions.json")
        apath = self.file("v2_mscoco_val2014_annotations.json")
        annotations = {}
        for i, ann in enumerate(field_of(read_json_file(apath), "annotations", str(apath))):
            annotations[field_of(ann, "question_id", f"{apath}: annotations[{i}]")] = ann
        out = []
        for i, q in enumerate(field_of(read_json_file(qpath), "questions", str(qpath))):
            where = f"{qpath}: questions[{i}]"
            qid = field_of(q, "question_id", where)
            if qid not in annotations:
                raise BenchmarkDataError(f"{apath}: no annotation for question_id {qid}")
            ann = annotations[qid]
            answers = [a["answer"] for a in field_of(ann, "answers", f"{apath}: question_id {qid}")]
            image = self.root / "val2014" / f"COCO_val2014_{field_of(q, 'image_id', where):012d}.jpg"
            out.append(
                Question(
                    str(qid),
                    f"{field_of(q, 'question', where)}\n{SHORT_ANSWER}",
                    image,
                    {"answers": answers, "answer_type": ann.get("answer_type"), "question_id": qid},
                )
            )
        return out

    def score(self, questions, answers, judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        if not self.offline:
            return {"score": None, "server": "EvalAI challenge 830 (VQAv2 test-dev)"}
        accs = [official_vqa_accuracy(evalai_normalize(answers[q.qid]), q.meta["answers"]) for q in questions]
        return {
            "score": round(100 * mean(accs), 2),
            "per_answer_type": _per_type(questions, accs, "answer_type"),
        }

    def submission(self, questions, answers, out_dir: Path) -> Path | None:
        ids = [q.meta["question_id"] for q in questions]
        full = self.root / "llava_vqav2_mscoco_test2015.jsonl"
        if self.split == "test-dev" and full.exists():  # the server wants every test2015 question
            ids = [rec["question_id"] for _, rec in read_jsonl(full)]
        by_id = {q.meta["question_id"]: answers.get(q.qid) for q in questions}
        rows = [{"question_id": i, "answer": evalai_normalize(by_id[i]) if by_id.get(i) else ""} for i in ids]
        return write_json(out_dir / f"vqav2_{self.split}_submission.json", rows, indent=None)


class VizWiz(Benchmark):
    """VizWiz-VQA. LLaVA-1.5 reports the test split, scored by the EvalAI server (challenge 2185): `test` writes
    `convert_vizwiz_for_submission.py`'s `[{image, answer}]`. `val` is scored here like lmms-eval's
    `vizwiz_vqa_val` (EvalAI processing of both sides, leave-one-out VQA accuracy); LLaVA has no val script."""

    name, title, metric, published = "vizwiz", "VizWiz", "VQA accuracy", 53.6
    dirname = "vizwiz"
    llava_answers = {"test": "vizwiz/answers/{model}.jsonl"}
    splits = ("val", "test")
    server_splits = ("test",)
    suffix = f"\n{UNANSWERABLE}\n{SHORT_ANSWER}"

    def load(self) -> list[Question]:
        if self.split == "test":
            return llava_question_file(self.file("llava_test.jsonl"), self.root / "test")
        path = self.file("val.json")
        out = []
        for i, rec in enumerate(read_json_file(path)):
            where = f"{path}: [{i}]"
            image = field_of(rec, "image", where)
            answers = [a["answer"] for a in field_of(rec, "answers", where)]
            meta = {"answers": answers, "answer_type": rec.get("answer_type"), "image": image}
            out.append(
                Question(
                    image, field_of(rec, "question", where) + self.suffix, self.root / "val" / image, meta
                )
            )
        return out

    def score(self, questions, answers, judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        if not self.offline:
            return {"score": None, "server": "EvalAI challenge 2185 (VizWiz test-dev)"}
        accs = [m4c_vqa_accuracy(answers[q.qid], q.meta["answers"]) for q in questions]
        return {
            "score": round(100 * mean(accs), 2),
            "per_answer_type": _per_type(questions, accs, "answer_type"),
        }

    def submission(self, questions, answers, out_dir: Path) -> Path | None:
        rows = [
            {"image": q.meta["image"], "answer": evalai_normalize(answers.get(q.qid, ""))} for q in questions
        ]
        return write_json(out_dir / f"vizwiz_{self.split}_submission.json", rows, indent=None)


def textvqa_question(prompt: str, where: str) -> str:
    """The question inside a TextVQA prompt, lower-cased, found as LLaVA's `eval_textvqa.prompt_processor`
    finds it: BLIP's "OCR tokens: ... Question: ... Short answer:" form, or the line that is not the
    "Reference OCR token:" one of a three-line prompt, or the first of two lines."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        question = match.group(1) if match else None
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        question = None
    if question is None:
        raise BenchmarkDataError(f"{where}: no question in the TextVQA prompt {prompt!r}")
    return question.lower()


class TextVQA(Benchmark):
    """TextVQA val v0.5.1, LLaVA's protocol: the question file carries the Rosetta OCR tokens
    (`llava_textvqa_val_v051_ocr.jsonl`; lmms-eval leaves them out by default) and `eval_textvqa.py` scores with
    the m4c evaluator. In that file `question_id` is the image id (several questions share one), so each
    question is joined to its annotation as `eval_textvqa.py` joins an answer: on (image_id, the question
    re-read from the prompt, lower-cased), the last annotation winning where two share that key. A question's
    id here is `<image id>#<n>`, its n-th question in the file; LLaVA's own answer files are matched on the
    same key (`record_key`)."""

    name, title, metric, published = "textvqa", "TextVQA", "VQA accuracy", 61.3
    dirname = "textvqa"
    llava_answers = {"val": "textvqa/answers/{model}.jsonl"}
    splits = ("val",)

    def load(self) -> list[Question]:
        qpath = self.file("llava_textvqa_val_v051_ocr.jsonl")
        apath = self.file("TextVQA_0.5.1_val.json")
        annotations = {}
        for i, rec in enumerate(field_of(read_json_file(apath), "data", str(apath))):
            where = f"{apath}: data[{i}]"
            key = (str(field_of(rec, "image_id", where)), str(field_of(rec, "question", where)).lower())
            annotations[key] = rec
        out, seen = [], defaultdict(int)
        for q in llava_question_file(qpath, self.root / "train_images"):
            image_id = str(q.meta["question_id"])
            key = (image_id, textvqa_question(q.text, f"{qpath}: question_id {image_id}"))
            if key not in annotations:
                raise BenchmarkDataError(
                    f"{apath}: no annotation for image_id {key[0]!r} and question {key[1]!r} ({qpath.name})"
                )
            answers = field_of(
                annotations[key], "answers", f"{apath}: image_id {key[0]}, question {key[1]!r}"
            )
            qid = f"{image_id}#{seen[image_id]}"
            seen[image_id] += 1
            out.append(Question(qid, q.text, q.image, {**q.meta, "answers": answers, "key": key}))
        return out

    def record_key(self, record: Mapping[str, Any], where: str) -> Hashable:
        return (
            str(field_of(record, "question_id", where)),
            textvqa_question(field_of(record, "prompt", where), where),
        )

    def match_key(self, question: Question) -> Hashable:
        return question.meta["key"]

    def score(self, questions, answers, judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        accs = [m4c_vqa_accuracy(answers[q.qid], q.meta["answers"]) for q in questions]
        return {"score": round(100 * mean(accs), 2)}


class GQA(Benchmark):
    """GQA testdev-balanced. LLaVA's `convert_gqa_for_eval.py` keeps `text.rstrip('.').lower()`, and the
    official `eval.py` counts a raw string match (lmms-eval also strips all punctuation; we do not)."""

    name, title, metric, published = "gqa", "GQA", "accuracy", 63.3
    dirname = "gqa"
    llava_answers = {"testdev_balanced": "gqa/answers/llava_gqa_testdev_balanced/{model}/merge.jsonl"}
    splits = ("testdev_balanced",)

    def load(self) -> list[Question]:
        questions = llava_question_file(self.file("llava_gqa_testdev_balanced.jsonl"), self.root / "images")
        gpath = self.file("testdev_balanced_questions.json")
        truth = read_json_file(gpath)
        out = []
        for q in questions:
            if q.qid not in truth:
                raise BenchmarkDataError(f"{gpath}: no question {q.qid}")
            answer = field_of(truth[q.qid], "answer", f"{gpath}: question {q.qid}")
            out.append(Question(q.qid, q.text, q.image, {**q.meta, "answer": answer}))
        return out

    def score(self, questions, answers: Mapping[str, str], judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        correct = [answers[q.qid].rstrip(".").lower() == q.meta["answer"] for q in questions]
        return {"score": round(100 * mean(correct), 2)}
