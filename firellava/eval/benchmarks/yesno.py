"""Yes/no benchmarks: POPE (LLaVA's answer mapping, F1 averaged over its three splits) and MME (acc + acc+)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firellava.core.instructions import SHORT_ANSWER
from firellava.eval.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    Question,
    field_of,
    read_jsonl,
    require_answers,
)
from firellava.eval.benchmarks.vqa import llava_question_file

POPE_SPLITS = ("adversarial", "popular", "random")
MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_INSTRUCTION = "Please answer yes or no."  # what MME asks; LLaVA drops it


def pope_yes_no(text: str) -> str:
    """LLaVA `eval_pope.py`: first sentence, commas dropped; any of No/not/no among its words means no."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def binary_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Yes is the positive class; yes-ratio is the share of predictions (not labels) that are yes."""
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs) if pairs else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(p == "yes" for p in predictions) / len(pairs) if pairs else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }  # fmt: skip


class POPE(Benchmark):
    """POPE on COCO val2014 (LLaVA pins POPE commit e3e39262), read as LLaVA's `eval_pope.py` reads it. LLaVA's
    `llava_pope_test.jsonl` numbers its questions per category (adversarial 1.., random 10000001..,
    popular 20000001..), while each `coco/coco_pope_<category>.json` numbers its labels 1..N; `eval_pope.py`
    pairs them by position: the k-th question of a category with the k-th line of that category's label file.
    Scored with its yes/no mapping and the F1 averaged over the three splits, which the paper's 85.9 is.
    lmms-eval differs (exact yes/no only, yes-ratio from the labels, one pooled F1)."""

    name, title, metric, published = "pope", "POPE", "F1 (mean of 3 splits)", 85.9
    dirname = "pope"
    llava_answers = {"test": "pope/answers/{model}.jsonl"}
    splits = ("test",)

    def load(self) -> list[Question]:
        qpath = self.file("llava_pope_test.jsonl")
        questions = llava_question_file(qpath, self.root / "val2014")
        by_split: dict[str, list[Question]] = {split: [] for split in POPE_SPLITS}
        seen: set[str] = set()
        for q in questions:
            split = q.meta["category"]
            if split not in by_split:
                raise BenchmarkDataError(
                    f"{qpath}: question {q.qid}: category {split!r} not in {POPE_SPLITS}"
                )
            if q.qid in seen:
                raise BenchmarkDataError(f"{qpath}: question_id {q.qid} appears twice")
            seen.add(q.qid)
            by_split[split].append(q)
        labelled: dict[str, Question] = {}
        for split, qs in by_split.items():
            if not qs:
                continue
            lpath = self.file("coco", f"coco_pope_{split}.json")
            labels = list(read_jsonl(lpath))
            if len(labels) != len(qs):
                raise BenchmarkDataError(
                    f"{lpath}: {len(labels)} labels for {len(qs)} {split!r} questions in {qpath.name}; "
                    "they are paired by position (LLaVA's file goes with POPE commit e3e39262's labels)"
                )
            for q, (lineno, rec) in zip(qs, labels):
                where = f"{lpath}:{lineno}"
                label = field_of(rec, "label", where)
                if label not in ("yes", "no"):
                    raise BenchmarkDataError(f"{where}: label {label!r} is not yes/no")
                if rec.get("image", q.meta["image"]) != q.meta["image"]:
                    raise BenchmarkDataError(
                        f"{where}: image {rec['image']!r}, but the question at this position in "
                        f"{qpath.name} (question_id {q.qid}) shows {q.meta['image']!r}"
                    )
                labelled[q.qid] = Question(q.qid, q.text, q.image, {**q.meta, "label": label})
        return [labelled[q.qid] for q in questions]

    def score(self, questions, answers, judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        per_split = {}
        for split in POPE_SPLITS:
            qs = [q for q in questions if q.meta["category"] == split]
            if qs:
                m = binary_metrics([pope_yes_no(answers[q.qid]) for q in qs], [q.meta["label"] for q in qs])
                per_split[split] = {
                    k: v if k in ("tp", "fp", "tn", "fn") else round(100 * v, 2) for k, v in m.items()
                }
        f1 = [m["f1"] for m in per_split.values()]
        acc = [m["accuracy"] for m in per_split.values()]
        return {
            "score": round(sum(f1) / len(f1), 2) if f1 else 0.0,
            "accuracy": round(sum(acc) / len(acc), 2) if acc else 0.0,
            "splits": per_split,
        }


def mme_yes_no(text: str) -> str:
    """MME `eval_tool/calculation.py`: exactly yes/no, else "yes" then "no" in the first 4 characters."""
    text = text.replace("\n", " ").replace("\t", " ").lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def mme_prompt(question: str) -> str:
    """LLaVA's `llava_mme.jsonl` prompt: MME's "Please answer yes or no." dropped, the rest stripped, then the
    single-word suffix on its own line. Stripping matters for the MME questions that put two spaces before the
    instruction: their prompt has no space before the newline."""
    return f"{question.replace(MME_INSTRUCTION, '').strip()}\n{SHORT_ANSWER}"


def _mme_question(prompt: str) -> str:
    return prompt.replace(SHORT_ANSWER, "").replace(MME_INSTRUCTION, "").strip()


class MME(Benchmark):
    """MME, read from its own release folder (`<subtask>/*.txt` beside the images, or `images/` +
    `questions_answers_YN/`). The prompt is LLaVA's `llava_mme.jsonl` one (`mme_prompt`); parsing, acc/acc+
    and the totals (summed unrounded) are the official `eval_tool/calculation.py`, which LLaVA runs after
    `convert_answer_to_mme.py`. LLaVA reports Perception. lmms-eval builds the same prompt."""

    name, title, metric, published = "mme", "MME-P", "perception (acc + acc+)", 1531.3
    scale = 2000.0
    dirname = "MME/MME_Benchmark_release_version"
    llava_answers = {"test": "MME/answers/{model}.jsonl"}
    splits = ("test",)

    def load(self) -> list[Question]:
        out = []
        for subtask in (*MME_PERCEPTION, *MME_COGNITION):
            folder = self.root / subtask
            if not folder.is_dir():
                continue
            split_layout = (folder / "questions_answers_YN").is_dir()
            qa_dir = folder / "questions_answers_YN" if split_layout else folder
            image_dir = folder / "images" if split_layout else folder
            for txt in sorted(qa_dir.glob("*.txt")):
                images = [
                    p
                    for p in image_dir.glob(txt.stem + ".*")
                    if p.suffix.lower() in (".jpg", ".png", ".jpeg")
                ]
                if not images:
                    raise BenchmarkDataError(f"{txt}: no image {txt.stem}.jpg/.png in {image_dir}")
                for i, line in enumerate(txt.read_text(encoding="utf-8").splitlines()):
                    if not line.strip():
                        continue
                    parts = line.split("\t")
                    if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                        raise BenchmarkDataError(
                            f"{txt}:{i + 1}: expected 'question<TAB>Yes|No', got {line!r}"
                        )
                    question, answer = parts[0].strip(), parts[1].strip().lower()
                    text = mme_prompt(question)
                    meta = {"subtask": subtask, "image": images[0].name, "answer": answer}
                    out.append(Question(f"{subtask}/{images[0].name}/{i}", text, images[0], meta))
        if not out:
            raise BenchmarkDataError(f"{self.root}: no MME subtask folders found")
        return out

    def record_key(self, record: Mapping[str, Any], where: str) -> Hashable:
        """LLaVA's MME answers name `<subtask>/.../<image>` and carry the prompt; like
        `convert_answer_to_mme.py`, the subtask, the image's stem and the question identify the line."""
        parts = str(field_of(record, "question_id", where)).split("/")
        return parts[0], Path(parts[-1]).stem, _mme_question(field_of(record, "prompt", where))

    def match_key(self, question: Question) -> Hashable:
        return question.meta["subtask"], Path(question.meta["image"]).stem, _mme_question(question.text)

    def score(self, questions, answers: Mapping[str, str], judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        by_task: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        for q in questions:
            by_task[q.meta["subtask"]][q.meta["image"]].append(mme_yes_no(answers[q.qid]) == q.meta["answer"])
        subtasks = {}
        for task, images in by_task.items():
            flat = [c for cs in images.values() for c in cs]
            acc = 100 * sum(flat) / len(flat)
            acc_plus = 100 * sum(all(cs) for cs in images.values()) / len(images)
            subtasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
        # `calculation.py` sums the unrounded subtask scores; rounding each first can move the total by 0.01
        perception = sum(s["score"] for t, s in subtasks.items() if t in MME_PERCEPTION)
        cognition = sum(s["score"] for t, s in subtasks.items() if t in MME_COGNITION)
        subtasks = {t: {k: round(v, 2) for k, v in s.items()} for t, s in subtasks.items()}
        return {
            "score": round(perception, 2),
            "perception": round(perception, 2),
            "cognition": round(cognition, 2),
            "subtasks": subtasks,
        }
