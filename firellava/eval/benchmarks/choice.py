"""Multiple-choice benchmarks: MMBench / MMBench-CN (CircularEval), ScienceQA-IMG and SEED-Bench."""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.core.instructions import OPTION_LETTER
from firellava.eval.benchmarks.base import (
    OPTION_LETTER_CN,
    Benchmark,
    BenchmarkDataError,
    Question,
    decode_base64_image,
    field_of,
    mean,
    read_json_file,
    require_answers,
)
from firellava.eval.benchmarks.vqa import llava_question_file
from firellava.eval.judge import Judge

LETTERS = "ABCDE"
CIRCULAR_STRIDE = 1_000_000  # MMBench stores circular variants as rows with index k * 1e6 + original index
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_option`: exactly one standalone option letter (A, A., (A), A), :A ...)."""
    if any(r in answer for r in _REFUSALS):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    words = mod.split()
    found = [c for c in choices if c in words]
    if len(found) == 1:
        return found[0]
    if not found and sum(z in words for z in ("Z", "")) == 1:
        return "Z"
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: exactly one option's text appears in the answer (case-insensitive)."""
    found = [k for k, v in choices.items() if str(v).lower() in answer.lower()]
    return found[0] if len(found) == 1 else None


def extract_option(answer: str, choices: Mapping[str, str]) -> str | None:
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


OPTION_JUDGE_SYSTEM = "You match a free-form answer to a multiple-choice question with the option it chose."
OPTION_JUDGE_RULE = (
    "Above are a multiple-choice question with its options, and an answer someone gave to it in their own "
    "words. Decide which one option the answer means. If the answer matches none of the options, or could mean "
    "more than one of them, the choice is Z.\nReply with a single uppercase letter: {letters} or Z. Write "
    "nothing else.\n\n"
    'Example: options A. a dog, B. a cat, C. a bird; answer: "It is a small kitten sitting on a sofa." -> B\n'
    'Example: options A. red, B. blue; answer: "I cannot tell the colour." -> Z'
)


def option_judge_prompt(question: str, options: Mapping[str, str], answer: str) -> str:
    """The judge's user turn: the question with its options (as the model saw them), the answer, the rule."""
    rule = OPTION_JUDGE_RULE.format(letters=", ".join(options))
    return f"[Question]\n{question}\n\n[Answer]\n{answer}\n\n[Task]\n{rule}"


class MMBench(Benchmark):
    """MMBench dev (en), LLaVA's `model_vqa_mmbench.py --single-pred-prompt` prompt (hint, question, options
    stopping at the first empty one, letter instruction); lmms-eval's wording differs. Scored with
    CircularEval: a question is right only if every circular variant is. The test split writes the xlsx that the
    OpenCompass server takes.

    Option extraction. The reference (OpenCompass / VLMEvalKit, which scored LLaVA-1.5's numbers) tries
    `can_infer_option` (one standalone letter) and `can_infer_text` (exactly one option's text in the answer);
    where both fail it asks gpt-3.5-turbo-0613 to match the answer to an option (up to three tries), and where
    that fails too it picks an option at random (seed 2680). It asks the judge only for the variants of a
    question that no rule-extracted variant has already failed. Here the same two rules run first; their misses
    (`unextracted`) go, for the still-undecided questions, to `eval.judge` when a judge model is set
    (`eval.judge.model`; with none set, the checkpoint that judges LLaVA-Bench does not map its own answers),
    with the project's own prompt. The judge runs greedily once per answer (a retry would repeat it), its reply
    is read with the same two rules, and the mapped letter is what CircularEval scores (`judge_asked`,
    `judge_mapped` count them). There is no random pick: an answer the judge maps to no option (Z), or any
    unextracted answer when no judge is set, counts as wrong, and `unextracted` shows how many there were."""

    name, title, metric, published = "mmbench", "MMBench", "CircularEval accuracy", 67.7
    dirname = "mmbench"
    llava_answers = {"dev": "mmbench/answers/mmbench_dev_20230712/{model}.jsonl"}
    splits = ("dev", "test")
    server_splits = ("test",)
    max_new_tokens = 1024
    files = {"dev": "mmbench_dev_20230712.tsv", "test": "mmbench_test_en_20231003.tsv"}
    instruction = OPTION_LETTER
    judge_fallback = True
    drop_columns = ("hint", "category", "source", "image", "comment", "l2-category")

    def rows(self) -> tuple[Path, list[dict[str, str]]]:
        path = self.file(self.files[self.split])
        csv.field_size_limit(sys.maxsize)  # base64 images are large cells
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        return path, rows

    def load(self) -> list[Question]:
        path, rows = self.rows()
        out = []
        for lineno, row in enumerate(rows, 2):
            where = f"{path}:{lineno}"
            index = int(field_of(row, "index", where))
            options = {}
            for letter in LETTERS:
                if not (row.get(letter) or "").strip() or row[letter].strip().lower() == "nan":
                    break
                options[letter] = row[letter]
            if len(options) < 2:
                raise BenchmarkDataError(f"{where}: index {index}: fewer than two options")
            question = field_of(row, "question", where)
            hint = (row.get("hint") or "").strip()
            if hint and hint.lower() != "nan":
                question = hint + "\n" + question
            for letter, option in options.items():
                question += f"\n{letter}. {option}"
            meta = {
                "index": index,
                "options": options,
                "answer": (row.get("answer") or "").strip(),
                "category": row.get("category"),
                "row": {k: v for k, v in row.items() if k not in self.drop_columns},
            }
            image = decode_base64_image(field_of(row, "image", where), where)
            out.append(Question(str(index), f"{question}\n{self.instruction}", image, meta))
        return out

    def score(self, questions, answers, judge: Judge | None = None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        if not self.offline:
            return {"score": None, "server": "OpenCompass MMBench evaluation server"}
        choices = {q.qid: extract_option(answers[q.qid], q.meta["options"]) for q in questions}
        unextracted = [q for q in questions if choices[q.qid] is None]
        reviews: dict[str, dict[str, Any]] = {}
        if judge is not None and unextracted:
            lost = {
                q.meta["index"] % CIRCULAR_STRIDE
                for q in questions
                if choices[q.qid] is not None and choices[q.qid] != q.meta["answer"]
            }
            asked = [q for q in unextracted if q.meta["index"] % CIRCULAR_STRIDE not in lost]
            contents = [
                option_judge_prompt(
                    q.text.removesuffix("\n" + self.instruction), q.meta["options"], answers[q.qid]
                )
                for q in asked
            ]
            for q, review in zip(asked, judge.review(OPTION_JUDGE_SYSTEM, contents)):
                option = extract_option(review, q.meta["options"])
                choices[q.qid] = option if option in q.meta["options"] else None
                reviews[q.qid] = {"review": review, "option": option}
        groups: dict[int, list[bool]] = defaultdict(list)
        category: dict[int, str] = {}
        for q in questions:
            base = q.meta["index"] % CIRCULAR_STRIDE
            groups[base].append(choices[q.qid] == q.meta["answer"])
            category.setdefault(base, q.meta["category"])
        correct = {base: all(cs) for base, cs in groups.items()}
        per_category: dict[str, list[bool]] = defaultdict(list)
        for base, ok in correct.items():
            per_category[str(category[base])].append(ok)
        return {
            "score": round(100 * mean(list(correct.values())), 2),
            "circular_groups": len(groups),
            "unextracted": len(unextracted),
            "judge": judge.model_name if judge is not None else None,
            "judge_asked": len(reviews),
            "judge_mapped": sum(choices[qid] is not None for qid in reviews),
            "per_category": {k: round(100 * mean(v), 2) for k, v in sorted(per_category.items())},
            "reviews": reviews,
        }

    def submission(self, questions, answers, out_dir: Path) -> Path | None:
        if self.offline:
            return None
        import pandas as pd

        rows = [{**q.meta["row"], "prediction": answers.get(q.qid, "")} for q in questions]
        path = out_dir / f"{self.name}_{self.split}_submission.xlsx"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial.xlsx")
        pd.DataFrame(rows).to_excel(tmp, index=False, engine="openpyxl")
        tmp.replace(path)
        return path


class MMBenchCN(MMBench):
    """MMBench-CN dev: the same protocol with the Chinese letter instruction (`--lang cn`)."""

    name, title, published = "mmbench_cn", "MMBench-CN", 63.6
    files = {"dev": "mmbench_dev_cn_20231003.tsv", "test": "mmbench_test_cn_20231003.tsv"}
    llava_answers = {"dev": "mmbench_cn/answers/mmbench_dev_cn_20231003/{model}.jsonl"}
    instruction = OPTION_LETTER_CN


def scienceqa_choice(text: str) -> str:
    """LLaVA `eval_science_qa.py`: the whole answer is one of its option letters A-E, or it starts "X. ", or it
    holds exactly one "The answer is X."; else FAILED. The membership test is on the letters, not a substring
    of "ABCDE", so "AB", "BC" and "" are failed parses."""
    if text in tuple(LETTERS):
        return text
    if len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        return text[0]
    found = re.findall(r"The answer is ([A-Z]).", text)
    return found[0] if len(found) == 1 else "FAILED"


class ScienceQA(Benchmark):
    """ScienceQA test, LLaVA's `llava_test_CQM-A.json` prompts + the letter instruction, parsed like
    `eval_science_qa.py` (`scienceqa_choice`; a failed parse counts as wrong and in `failed_parse`). The headline
    is IMG accuracy (questions with an image), the paper's "SQA-IMG"; overall accuracy is reported beside it.
    lmms-eval's `scienceqa_img` accepts the bare letter or "X." at the start and has no "The answer is X." rule."""

    name, title, metric, published = "scienceqa_img", "SQA-IMG", "accuracy (image subset)", 71.6
    dirname = "scienceqa"
    llava_answers = {"test": "scienceqa/answers/{model}.jsonl"}
    splits = ("test",)
    max_new_tokens = 1024

    def load(self) -> list[Question]:
        qpath = self.file("llava_test_CQM-A.json")
        ppath = self.file("problems.json")
        problems = read_json_file(ppath)
        out = []
        for i, rec in enumerate(read_json_file(qpath)):
            where = f"{qpath}: [{i}]"
            pid = str(field_of(rec, "id", where))
            if pid not in problems:
                raise BenchmarkDataError(f"{ppath}: no problem {pid} (named by {where})")
            prob = problems[pid]
            human = field_of(rec, "conversations", where)[0]["value"]
            text = human.replace(IMAGE_TOKEN, "").strip() + "\n" + OPTION_LETTER
            image = self.root / "images" / "test" / rec["image"] if rec.get("image") else None
            choices = field_of(prob, "choices", f"{ppath}: {pid}")
            meta = {"answer": LETTERS[field_of(prob, "answer", f"{ppath}: {pid}")], "n_choices": len(choices)}
            out.append(Question(pid, text, image, {**meta, "has_image": bool(prob.get("image"))}))
        return out

    def score(self, questions, answers, judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        correct, img, failed = [], [], 0
        for q in questions:
            choice = scienceqa_choice(answers[q.qid])
            failed += choice == "FAILED"
            ok = choice in LETTERS[: q.meta["n_choices"]] and choice == q.meta["answer"]
            correct.append(ok)
            if q.meta["has_image"]:
                img.append(ok)
        return {
            "score": round(100 * mean(img), 2),
            "accuracy": round(100 * mean(correct), 2),
            "img_questions": len(img),
            "failed_parse": failed,
        }


class SEEDBench(Benchmark):
    """SEED-Bench, LLaVA's `llava-seed-bench.jsonl` prompts; `convert_seed_for_submission.py` counts an exact
    match of the whole answer with the letter (lmms-eval keeps only the first character). Video questions use
    the middle frame that LLaVA's `extract_video_frames.py` wrote. The headline is the total ("SEED")."""

    name, title, metric, published = "seed_bench", "SEED", "accuracy (all)", 61.6
    dirname = "seed_bench"
    llava_answers = {"test": "seed_bench/answers/{model}/merge.jsonl"}
    splits = ("test",)

    def load(self) -> list[Question]:
        questions = llava_question_file(self.file("llava-seed-bench.jsonl"), self.root)
        gpath = self.file("SEED-Bench.json")
        data = read_json_file(gpath)
        types = {v: k for k, v in field_of(data, "question_type", str(gpath)).items()}
        truth = {
            str(field_of(q, "question_id", f"{gpath}: questions[{i}]")): q
            for i, q in enumerate(data["questions"])
        }
        out = []
        for q in questions:
            if q.qid not in truth:
                raise BenchmarkDataError(f"{gpath}: no question_id {q.qid}")
            t = truth[q.qid]
            meta = {
                **q.meta,
                "answer": field_of(t, "answer", f"{gpath}: question_id {q.qid}"),
                "data_type": t.get("data_type", "image"),
                "question_type": types.get(t.get("question_type_id"), str(t.get("question_type_id"))),
            }
            out.append(Question(q.qid, q.text, q.image, meta))
        return out

    def score(self, questions: Sequence[Question], answers: Mapping[str, str], judge=None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        by_type: dict[str, list[bool]] = defaultdict(list)
        by_data: dict[str, list[bool]] = defaultdict(list)
        correct = []
        for q in questions:
            ok = answers[q.qid] == q.meta["answer"]
            correct.append(ok)
            by_type[q.meta["question_type"]].append(ok)
            by_data[q.meta["data_type"]].append(ok)
        return {
            "score": round(100 * mean(correct), 2),
            **{f"{k}_accuracy": round(100 * mean(v), 2) for k, v in sorted(by_data.items())},
            "per_question_type": {k: round(100 * mean(v), 2) for k, v in sorted(by_type.items())},
        }
