"""Judge-scored benchmarks: LLaVA-Bench-in-the-Wild (relative score) and MM-Vet (graded correctness).

The judge prompts are the project's own wording of the same instructions the reference judges get; the content
layout and the score arithmetic follow LLaVA's scripts. The judge runs greedily (LLaVA's GPT-4 judge used
temperature 0.2), and a review that cannot be parsed is counted and left out of the means (LLaVA would average
in its [-1, -1] placeholder), so the failure count is part of the result. A score pair off the rule's 1-10
scale is counted and left out the same way: LLaVA's parse reads ".4,.03" as two numbers, and a reference mean
near zero would blow the relative score up by orders of magnitude.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from firellava.core.io import write_json
from firellava.eval.benchmarks.base import (
    Benchmark,
    BenchmarkDataError,
    Question,
    field_of,
    mean,
    read_json_file,
    read_jsonl,
    require_answers,
)
from firellava.eval.benchmarks.vqa import llava_question_file
from firellava.eval.judge import Judge, parse_correctness, parse_score_pair

LLAVA_BENCH_SYSTEM = "You are a careful, impartial assistant who checks the quality of answers."
LLAVA_BENCH_RULE = (
    "Two AI assistants answered the user's question above about an image. You cannot see the image; the "
    "context above describes it in a few sentences. Judge how helpful, relevant and accurate each answer is and "
    "how much useful detail it gives, and give each assistant one overall score from 1 to 10 (higher is "
    "better).\nOn the first line, write only the two scores, for Assistant 1 and Assistant 2 in that order, "
    "separated by a space.\nOn the following lines, explain your judgement. Do not let the order in which the "
    "answers were shown influence it."
)
SCORE_SCALE = (1.0, 10.0)  # the rule's scale for each assistant's score
MMVET_SYSTEM = "You grade answers of AI models against a ground truth."
MMVET_PROMPT = (
    "Compare the model's prediction with the ground truth and give the prediction a correctness score. In the "
    "ground truth, <AND> means every listed element must be in the prediction for it to be fully right, and "
    "<OR> means any one of them is enough. The score is one of 0.0 (wrong), 0.1, 0.2, ..., 0.9, 1.0 (fully "
    "right). Reply with the score only.\n\n"
    "Question | Ground truth | Prediction | Correctness\n"
    "--- | --- | --- | ---\n"
    "How many apples are on the table? | 3 | There are three apples. | 1.0\n"
    "What colors are the two flags? | red <AND> blue | The flags are red. | 0.5\n"
    "What does the sign say? | STOP <OR> stop sign | It says stop. | 1.0\n"
    "Which animal is shown? | cat | A small dog. | 0.0\n"
    "What is 12 divided by 4? | 3 | 12 / 4 = 3 | 1.0\n"
)


class LLaVABench(Benchmark):
    """LLaVA-Bench-in-the-Wild: 60 questions in three categories. The judge sees the captions, the question,
    the reference answer as Assistant 1 and ours as Assistant 2 (LLaVA's `eval_gpt_review_bench.py` layout);
    the score is mean(ours) / mean(reference) * 100 (`summarize_gpt_review.py`), overall and per category. The
    score pair is read as `parse_score` reads it; a review it rejects is counted (`judge_parse_failures`) and
    left out of `score`, as is a pair off the rule's scale (`judge_out_of_scale`), while `score_llava_script`
    averages every parsed pair and each failure's [-1, -1] in, as LLaVA's summary does.
    lmms-eval's `llava_in_the_wild` parses the pair the same way."""

    name, title, metric, published = "llava_bench", "LLaVA-W", "relative score (judge)", 70.7
    dirname = "llava-bench-in-the-wild"
    llava_answers = {"test": "llava-bench-in-the-wild/answers/{model}.jsonl"}
    splits = ("test",)
    max_new_tokens = 1024
    judged = True

    def load(self) -> list[Question]:
        questions = llava_question_file(self.file("questions.jsonl"), self.root / "images")
        cpath, apath = self.file("context.jsonl"), self.file("answers_gpt4.jsonl")
        captions = {rec.get("image"): rec.get("caption") for _, rec in read_jsonl(cpath)}
        references = {
            str(field_of(r, "question_id", f"{apath}:{n}")): r.get("text") for n, r in read_jsonl(apath)
        }
        out = []
        for q in questions:
            if q.qid not in references or q.meta["image"] not in captions:
                raise BenchmarkDataError(
                    f"{self.root}: question {q.qid}: no reference answer in {apath.name} or no caption for "
                    f"image {q.meta['image']!r} in {cpath.name}"
                )
            meta = {**q.meta, "reference": references[q.qid], "caption": captions[q.meta["image"]]}
            out.append(Question(q.qid, q.text, q.image, meta))
        return out

    def score(self, questions, answers, judge: Judge | None = None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        if judge is None:
            raise ValueError(f"{self.name} needs a judge (eval.judge)")
        contents = [
            f"[Context]\n{q.meta['caption']}\n\n[Question]\n{q.text}\n\n"
            f"[Assistant 1]\n{q.meta['reference']}\n\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answers[q.qid]}\n\n[End of Assistant 2]\n\n[System]\n{LLAVA_BENCH_RULE}\n\n"
            for q in questions
        ]
        reviews = judge.review(LLAVA_BENCH_SYSTEM, contents)
        pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
        with_placeholders: list[tuple[float, float]] = []
        per_sample, failures, off_scale = {}, 0, 0
        for q, review in zip(questions, reviews):
            pair = parse_score_pair(review)
            per_sample[q.qid] = {"review": review, "scores": pair}
            with_placeholders.append(pair or (-1.0, -1.0))
            if pair is None:
                failures += 1
                continue
            if not all(SCORE_SCALE[0] <= s <= SCORE_SCALE[1] for s in pair):
                off_scale += 1
                continue
            pairs[str(q.meta["category"])].append(pair)
            pairs["all"].append(pair)

        def relative(ps: Sequence[tuple[float, float]]) -> float | None:
            ref = mean([p[0] for p in ps])
            return round(100 * mean([p[1] for p in ps]) / ref, 2) if ps and ref else None

        return {
            "score": relative(pairs.get("all", [])),
            "per_category": {k: relative(v) for k, v in sorted(pairs.items()) if k != "all"},
            "judge": judge.model_name,
            "judge_parse_failures": failures,
            "judge_out_of_scale": off_scale,
            # `summarize_gpt_review.py` averages the [-1, -1] of every failed parse in; equal to "score" when
            # every review parsed and kept to the scale
            "score_llava_script": relative(with_placeholders),
            "reviews": per_sample,
        }


class MMVet(Benchmark):
    """MM-Vet: the question with no suffix (as LLaVA asks it; lmms-eval adds a CoT pre-prompt), graded 0-1 by the
    judge from a few-shot table; total = mean * 100, and per capability. An unparsable grade scores 0, as the
    official grader does after its retries. The file for the official online grader (`{"v1_<id>": answer}`,
    LLaVA's `convert_mmvet_for_eval.py`) is written as well."""

    name, title, metric, published = "mm_vet", "MM-Vet", "judge-graded score", 35.4
    dirname = "mm-vet"
    llava_answers = {"test": "mm-vet/answers/{model}.jsonl"}
    splits = ("test",)
    max_new_tokens = 1024
    judged = True

    def load(self) -> list[Question]:
        path = self.file("mm-vet.json")
        out = []
        for qid, rec in read_json_file(path).items():
            where = f"{path}: {qid}"
            meta = {
                "answer": field_of(rec, "answer", where),
                "capability": list(field_of(rec, "capability", where)),
            }
            image = self.root / "images" / field_of(rec, "imagename", where)
            out.append(Question(qid, field_of(rec, "question", where), image, meta))
        return out

    def record_key(self, record: Mapping[str, Any], where: str) -> Hashable:
        """LLaVA's MM-Vet answers number the questions 0..N; `convert_mmvet_for_eval.py` names them v1_<n>."""
        qid = str(field_of(record, "question_id", where))
        return qid if qid.startswith("v1_") else f"v1_{qid}"

    def score(self, questions, answers: Mapping[str, str], judge: Judge | None = None) -> dict[str, Any]:
        require_answers(self.name, questions, answers)
        if judge is None:
            raise ValueError(f"{self.name} needs a judge (eval.judge)")
        contents = [
            MMVET_PROMPT
            + f"{q.text.replace(chr(10), ' ')} | {q.meta['answer'].replace(chr(10), ' ')} | "
            + f"{answers[q.qid].replace(chr(10), ' ')} |"
            for q in questions
        ]
        reviews = judge.review(MMVET_SYSTEM, contents)
        grades, per_cap, per_sample, failures = [], defaultdict(list), {}, 0
        for q, review in zip(questions, reviews):
            grade = parse_correctness(review)
            per_sample[q.qid] = {"review": review, "grade": grade}
            failures += grade is None
            grade = grade or 0.0
            grades.append(grade)
            for cap in q.meta["capability"]:
                per_cap[cap].append(grade)
        return {
            "score": round(100 * mean(grades), 2),
            "per_capability": {k: round(100 * mean(v), 2) for k, v in sorted(per_cap.items())},
            "judge": judge.model_name,
            "judge_parse_failures": failures,
            "reviews": per_sample,
        }

    def submission(self, questions, answers, out_dir: Path) -> Path | None:
        return write_json(
            out_dir / "mm_vet_submission.json", {q.qid: answers.get(q.qid, "") for q in questions}
        )
