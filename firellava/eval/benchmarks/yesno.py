"""Yes/no benchmarks: POPE (LLaVA's answer mapping, F1 averaged over its three splits) and MME (acc + acc+)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
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
MME_ORIGINAL_SUFFIX = " Please answer yes or no."


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
    """POPE on COCO val2014 (LLaVA pins POPE commit e3e39262). LLaVA's protocol, which the paper's 85.9 comes
    from: the yes/no mapping of `eval_pope.py` and the F1 averaged over the three splits. lmms-eval differs
    (exact yes/no only, yes-ratio from the labels, one pooled F1)."""

    name, title, metric, published = "pope", "POPE", "F1 (mean of 3 splits)", 85.9
    dirname = "pope"
    splits = ("test",)

    def load(self) -> list[Question]:
        questions = llava_question_file(self.file("llava_pope_test.jsonl"), self.root / "val2014")
        labels: dict[str, str] = {}
        for split in POPE_SPLITS:
            path = self.file("coco", f"coco_pope_{split}.json")
            for lineno, rec in read_jsonl(path):
                labels[f"{split}/{field_of(rec, 'question_id', f'{path}:{lineno}')}"] = rec.get("label")
        seen: set[str] = set()
        out = []
        for q in questions:
            split = q.meta["category"]
            if split not in POPE_SPLITS:
                raise BenchmarkDataError(
                    f"llava_pope_test.jsonl: question {q.qid}: category {split!r} not in {POPE_SPLITS}"
                )
            if q.qid in seen:
                raise BenchmarkDataError(f"llava_pope_test.jsonl: question_id {q.qid} appears twice")
            seen.add(q.qid)
            label = labels.get(f"{split}/{q.qid}")
            if label not in ("yes", "no"):
                raise BenchmarkDataError(f"coco/coco_pope_{split}.json: question_id {q.qid}: label {label!r}")
            out.append(Question(q.qid, q.text, q.image, {**q.meta, "label": label}))
        return out

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


class MME(Benchmark):
    """MME, read from its own release folder (`<subtask>/*.txt` beside the images, or `images/` +
    `questions_answers_YN/`). The prompt is LLaVA's `llava_mme.jsonl` swap of " Please answer yes or no." for
    the single-word suffix; parsing and acc/acc+ are the official `calculation.py`. LLaVA reports Perception."""

    name, title, metric, published = "mme", "MME-P", "perception (acc + acc+)", 1531.3
    scale = 2000.0
    dirname = "MME/MME_Benchmark_release_version"
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
                    text = question.replace(MME_ORIGINAL_SUFFIX, "\n" + SHORT_ANSWER)
                    if text == question:
                        text = f"{question}\n{SHORT_ANSWER}"
                    meta = {"subtask": subtask, "image": images[0].name, "answer": answer}
                    out.append(Question(f"{subtask}/{images[0].name}/{i}", text, images[0], meta))
        if not out:
            raise BenchmarkDataError(f"{self.root}: no MME subtask folders found")
        return out

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
            subtasks[task] = {
                "acc": round(acc, 2),
                "acc_plus": round(acc_plus, 2),
                "score": round(acc + acc_plus, 2),
            }
        perception = sum(s["score"] for t, s in subtasks.items() if t in MME_PERCEPTION)
        cognition = sum(s["score"] for t, s in subtasks.items() if t in MME_COGNITION)
        return {
            "score": round(perception, 2),
            "perception": round(perception, 2),
            "cognition": round(cognition, 2),
            "subtasks": subtasks,
        }
