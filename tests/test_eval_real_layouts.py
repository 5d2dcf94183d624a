"""Tiny hand-made files in the layouts LLaVA-1.5's eval scripts read (question ids, joins, answer files), loaded
and scored to hand-computed values; and scoring LLaVA-format answer files without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firellava.core.instructions import SHORT_ANSWER
from firellava.eval.answers import read_answer_file
from firellava.eval.benchmarks import BenchmarkDataError, Question, get_benchmark
from firellava.eval.benchmarks.judged import LLaVABench
from firellava.eval.benchmarks.vqa import textvqa_question
from firellava.eval.benchmarks.yesno import mme_prompt


def jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- POPE ------------------------------------------------------------------------------------------------------

POPE_CASES = {  # category: (first question id in llava_pope_test.jsonl, labels, model answers)
    "adversarial": (1, ["yes", "no", "yes", "no"], ["Yes", "Yes, there is.", "No.", "No"]),
    "random": (10_000_001, ["yes", "no"], ["Yes.", "There is not a dog."]),
    "popular": (20_000_001, ["no", "yes"], ["Yes", "Yes"]),
}


def write_pope(root: Path) -> Path:
    folder = root / "pope"
    questions = []
    for split, (first, labels, _) in POPE_CASES.items():
        rows = []
        for k, label in enumerate(labels):
            image = f"COCO_val2014_{k:012d}.jpg"
            q = f"Is there a thing {k} in the image?"
            rows.append({"question_id": k + 1, "image": image, "text": q, "label": label})
            questions.append(
                {"question_id": first + k, "image": image, "text": f"{q}\n{SHORT_ANSWER}", "category": split}
            )
        jsonl(folder / "coco" / f"coco_pope_{split}.json", rows)
    jsonl(folder / "llava_pope_test.jsonl", questions)
    return folder


def pope_answers(folder: Path) -> Path:
    """LLaVA's answer file for the questions above (`model_vqa_loader.py` output)."""
    rows = []
    for first, _, answers in POPE_CASES.values():
        for k, text in enumerate(answers):
            rows.append(
                {"question_id": first + k, "prompt": "...", "text": text, "model_id": "llava-v1.5-13b"}
            )
    return jsonl(folder / "answers" / "llava-v1.5-13b.jsonl", rows)


def test_pope_reads_llava_question_ids_and_pairs_labels_by_position(tmp_path):
    folder = write_pope(tmp_path)
    bench = get_benchmark("pope", tmp_path)
    questions = bench.load()
    assert [q.qid for q in questions][:5] == ["1", "2", "3", "4", "10000001"]
    assert {q.qid: q.meta["label"] for q in questions}[
        "20000002"
    ] == "yes"  # line 2 of coco_pope_popular.json
    answers, unmatched = read_answer_file(bench, questions, pope_answers(folder))
    assert unmatched == 0
    out = bench.score(questions, answers)
    # adversarial: TP 1, FP 1, TN 1, FN 1 -> F1 1/2; random: F1 1; popular: TP 1, FP 1 -> P 1/2, R 1, F1 2/3
    assert out["splits"]["adversarial"]["f1"] == 50.0
    assert out["splits"]["random"]["f1"] == 100.0
    assert out["splits"]["popular"]["f1"] == pytest.approx(66.67)
    assert out["score"] == pytest.approx(100 * (1 / 2 + 1 + 2 / 3) / 3, abs=0.01)


def test_pope_label_files_that_do_not_pair_are_errors(tmp_path):
    folder = write_pope(tmp_path)
    path = folder / "coco" / "coco_pope_random.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    jsonl(path, rows[:1])
    with pytest.raises(BenchmarkDataError, match="coco_pope_random.json: 1 labels for 2 'random' questions"):
        get_benchmark("pope", tmp_path).load()
    jsonl(path, [rows[1], rows[0]])
    with pytest.raises(BenchmarkDataError, match=r"coco_pope_random.json:1: image .*question_id 10000001"):
        get_benchmark("pope", tmp_path).load()


# --- TextVQA ---------------------------------------------------------------------------------------------------


def write_textvqa(root: Path) -> Path:
    folder = root / "textvqa"
    cases = [  # (image id, question, OCR tokens, ten human answers)
        ("0a1b", "What brand is this?", ["sony"], ["sony"] * 10),
        ("0a1b", "what number is on the dial?", [], ["7"] * 4 + ["seven"] * 6),
        ("ffee", "What does the sign say?", ["stop", "here"], ["stop"] * 2 + ["stop here"] * 8),
    ]
    rows, data = [], []
    for i, (image_id, q, ocr, answers) in enumerate(cases):
        ocr_line = f"\nReference OCR token: {', '.join(ocr)}" if ocr else ""
        rows.append(
            {"question_id": image_id, "image": f"{image_id}.jpg", "text": f"{q}{ocr_line}\n{SHORT_ANSWER}"}
        )
        # the annotations spell the question in lower case; the join lower-cases both sides
        data.append(
            {"question_id": 34602 + i, "image_id": image_id, "question": q.lower(), "answers": answers}
        )
    jsonl(folder / "llava_textvqa_val_v051_ocr.jsonl", rows)
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}), encoding="utf-8")
    return folder


def test_textvqa_joins_on_image_id_and_question(tmp_path):
    folder = write_textvqa(tmp_path)
    bench = get_benchmark("textvqa", tmp_path)
    questions = bench.load()
    assert [q.qid for q in questions] == ["0a1b#0", "0a1b#1", "ffee#0"]
    assert questions[1].meta["answers"][0] == "7"
    # LLaVA's answer file: question_id is the image id (repeated), the prompt names the question
    rows = [
        {"question_id": q.meta["question_id"], "prompt": q.text, "text": t}
        for q, t in zip(reversed(questions), ["Stop", "7", "Sony."])
    ]
    answers, unmatched = read_answer_file(bench, questions, jsonl(folder / "answers.jsonl", rows))
    assert unmatched == 0 and answers == {"ffee#0": "Stop", "0a1b#1": "7", "0a1b#0": "Sony."}
    out = bench.score(questions, answers)
    # sony: 10 matches -> 1; "7" vs 4 x "7" + 6 x "seven" (both normalized to "7") -> 1;
    # "stop": two humans -> leave-one-out (2 x 1/3 + 8 x 2/3) / 10 = 0.6
    assert out["score"] == pytest.approx(100 * (1 + 1 + 0.6) / 3, abs=0.01)


def test_textvqa_question_from_prompt():
    assert textvqa_question(f"Who?\nReference OCR token: a, b\n{SHORT_ANSWER}", "x") == "who?"
    assert textvqa_question(f"Who?\n{SHORT_ANSWER}", "x") == "who?"
    assert textvqa_question(f"Reference OCR token: a\nWho?\n{SHORT_ANSWER}", "x") == "who?"
    assert textvqa_question("OCR tokens: a. Question: Who Is? Short answer: ", "x") == "who is?"
    with pytest.raises(BenchmarkDataError, match="f.jsonl:3: no question"):
        textvqa_question("one line", "f.jsonl:3")


def test_textvqa_without_annotation_names_the_key(tmp_path):
    folder = write_textvqa(tmp_path)
    path = folder / "TextVQA_0.5.1_val.json"
    data = json.loads(path.read_text())["data"][:2]
    path.write_text(json.dumps({"data": data}))
    with pytest.raises(BenchmarkDataError, match="no annotation for image_id 'ffee' and question 'what does"):
        get_benchmark("textvqa", tmp_path).load()


# --- VQAv2 val, MME ----------------------------------------------------------------------------------------------


def test_vqav2_val_scores_as_the_current_official_code(tmp_path):
    humans = ["two"] * 8 + ["2"] * 2
    questions = [Question("1", "?", None, {"answers": humans, "answer_type": "number"})]
    out = get_benchmark("vqav2", tmp_path, "val").score(questions, {"1": "2"})
    assert out["score"] == 100.0  # the 2016 vqaEval.py gave 60.0
    assert get_benchmark("vqav2", tmp_path, "val").score(questions, {"1": "Two."})["score"] == 100.0


def write_mme(root: Path, subtasks: dict[str, list[list[tuple[str, str]]]]) -> None:
    for subtask, images in subtasks.items():
        folder = root / "MME" / "MME_Benchmark_release_version" / subtask
        folder.mkdir(parents=True)
        for i, lines in enumerate(images):
            (folder / f"{i}.jpg").write_bytes(b"")
            (folder / f"{i}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in lines), encoding="utf-8")


def test_mme_prompts_match_llava_byte_for_byte(tmp_path):
    # one MME line with two spaces before the instruction, one with one
    write_mme(
        tmp_path,
        {
            "color": [
                [
                    ("Is there a brown giraffe in the image?  Please answer yes or no.", "Yes"),
                    ("Is there a black giraffe in the image? Please answer yes or no.", "No"),
                ]
            ]
        },
    )
    texts = [q.text for q in get_benchmark("mme", tmp_path).load()]
    assert texts == [
        "Is there a brown giraffe in the image?\nAnswer the question using a single word or phrase.",
        "Is there a black giraffe in the image?\nAnswer the question using a single word or phrase.",
    ]
    assert mme_prompt("Is it red?") == f"Is it red?\n{SHORT_ANSWER}"  # no instruction to drop


def test_mme_totals_sum_unrounded_subtask_scores(tmp_path):
    # existence: 3 images, one with both answers wrong -> acc 4/6, acc+ 2/3 -> 133.333...
    # count: 3 images, one with both wrong, one with one wrong -> acc 3/6, acc+ 1/3 -> 83.333...
    q = [("Is it? Please answer yes or no.", "Yes"), ("Is it not? Please answer yes or no.", "No")]
    write_mme(tmp_path, {"existence": [q] * 3, "count": [q] * 3})
    bench = get_benchmark("mme", tmp_path)
    questions = bench.load()
    wrong = {"existence/0.jpg/0", "existence/0.jpg/1", "count/0.jpg/0", "count/0.jpg/1", "count/1.jpg/0"}
    answers = {x.qid: ("no" if x.meta["answer"] == "yes" else "yes") if x.qid in wrong else x.meta["answer"]
               for x in questions}  # fmt: skip
    out = bench.score(questions, answers)
    assert out["subtasks"]["existence"]["score"] == 133.33 and out["subtasks"]["count"]["score"] == 83.33
    assert out["perception"] == 216.67  # the sum of the rounded subtask scores would be 216.66
    # LLaVA's MME answers name <subtask>/<image> (twice per image) and carry the prompt
    rows = [{"question_id": f"{x.meta['subtask']}/{x.meta['image']}", "prompt": x.text, "text": answers[x.qid]}
            for x in reversed(questions)]  # fmt: skip
    read, unmatched = read_answer_file(bench, questions, jsonl(tmp_path / "mme.jsonl", rows))
    assert (read, unmatched) == (answers, 0)


# --- LLaVA-Bench: LLaVA's own [-1, -1] arithmetic beside ours ------------------------------------------------------


def test_llava_bench_counts_unparsed_and_off_scale_reviews(tmp_path):
    from firellava.engines import Generation, SamplingParams
    from firellava.eval.judge import Judge

    class Replies:
        model_name = "judge"

        def __init__(self, replies):
            self.replies = replies

        def generate(self, prompts, params):
            return [Generation(self.replies.pop(0), 3, 1, "stop") for _ in prompts]

    questions = [
        Question(str(i), f"q{i}", None, {"category": "conv", "caption": "c", "reference": "r"})
        for i in range(4)
    ]
    answers = {str(i): "a" for i in range(4)}
    judge = Judge(Replies(["8 6\nok", "8, 9\nok", "10 5", ".01,.9"]), SamplingParams(max_tokens=8))
    out = LLaVABench(tmp_path).score(questions, answers, judge)
    assert out["judge_parse_failures"] == 1  # "8, 9" gives three fields in LLaVA's parse_score
    # ".01,.9" parses, as in LLaVA, but is off the rule's 1-10 scale: counted and not scored
    assert out["judge_out_of_scale"] == 1
    assert out["score"] == pytest.approx(100 * (6 + 5) / (8 + 10), abs=0.01)
    # summarize_gpt_review.py averages the failure's [-1, -1] and every parsed pair in
    assert out["score_llava_script"] == pytest.approx(100 * (6 + 5 - 1 + 0.9) / (8 + 10 - 1 + 0.01), abs=0.01)


# --- eval.answers_from: LLaVA's released answers, no model ----------------------------------------------------------


def test_stage_scores_llava_answer_files_without_a_model(tmp_path):
    from firellava.engines import EngineSpec, SamplingParams
    from firellava.eval.stage import EvalSpec, evaluate

    folder = write_pope(tmp_path / "data")
    answers = pope_answers(folder)
    engine = EngineSpec("transformers", {}, SamplingParams(max_tokens=8))
    spec = EvalSpec(
        benchmarks=["pope"],
        checkpoint=str(tmp_path / "no-such-checkpoint"),
        model_name="llava-v1.5-13b",
        data_root=str(tmp_path / "data"),
        answers_from={"pope": str(answers)},
    )
    summary = evaluate(spec, engine, engine, tmp_path / "out")
    assert summary["model"] == "llava-v1.5-13b" and summary["generated"] == 0
    assert summary["pope"] == pytest.approx(100 * (1 / 2 + 1 + 2 / 3) / 3, abs=0.01)
    result = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["pope"]
    assert (result["answers_file"], result["answers_unmatched"]) == (str(answers), 0)
    # a folder of <benchmark>.jsonl works too; with eval.limit the rest of the file is counted, not scored
    (tmp_path / "answers").mkdir()
    (tmp_path / "answers" / "pope.jsonl").write_text(answers.read_text())
    limited = EvalSpec(**{**spec.__dict__, "answers_from": str(tmp_path / "answers"), "limit": 4})
    evaluate(limited, engine, engine, tmp_path / "out2")
    result = json.loads((tmp_path / "out2" / "results.json").read_text())["benchmarks"]["pope"]
    assert result["answers_unmatched"] == 4 and result["splits"]["adversarial"]["f1"] == 50.0
    # eval.answers_from=llava: where LLaVA's scripts (and its eval.zip) leave eval.model_name's answers
    evaluate(EvalSpec(**{**spec.__dict__, "answers_from": "llava"}), engine, engine, tmp_path / "out4")
    result = json.loads((tmp_path / "out4" / "results.json").read_text())["benchmarks"]["pope"]
    assert result["answers_file"] == str(answers) and result["score"] == pytest.approx(summary["pope"])
    with pytest.raises(ValueError, match="names no answer file for 'pope'"):
        evaluate(EvalSpec(**{**spec.__dict__, "answers_from": {}}), engine, engine, tmp_path / "out3")
    with pytest.raises(ValueError, match="eval.blind asks the model"):
        EvalSpec(**{**spec.__dict__, "blind": True})
