"""Every scorer against hand-computed cases, including the normalization edge cases."""

from __future__ import annotations

import pytest

from firellava.core.instructions import OPTION_LETTER
from firellava.eval.benchmarks import Question, get_benchmark
from firellava.eval.benchmarks.choice import (
    CIRCULAR_STRIDE,
    MMBench,
    can_infer_option,
    extract_option,
    scienceqa_choice,
)
from firellava.eval.benchmarks.yesno import MME, POPE, binary_metrics, mme_yes_no, pope_yes_no
from firellava.eval.judge import parse_correctness, parse_score_pair
from firellava.eval.normalize import evalai_normalize, m4c_vqa_accuracy, official_vqa_accuracy


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("Two", "2"),  # number words
        ("none", "0"),
        ("The red circle", "red circle"),  # articles
        ("an apple", "apple"),
        ("dont", "don't"),  # contractions
        ("isnt it", "isn't it"),
        ("yes.", "yes"),  # a sentence period goes
        ("3.5", "3.5"),  # a decimal point stays
        ("1,000", "1000"),  # digit-comma-digit: punctuation is deleted, not spaced
        ("hello-world", "hello world"),  # no space next to it: replaced by a space
        ("red / blue", "red blue"),  # a space next to it: deleted
        ("Whats up?", "what's up"),
        ("It's the dog's", "it 's dog 's"),  # m4c's word_tokenize splits 's
        ("  Left\n", "left"),
    ],
)
def test_evalai_normalization(raw, normalized):
    assert evalai_normalize(raw) == normalized


def test_vqa_accuracy_leave_one_out():
    # two of ten humans said "2": leaving out one of them leaves 1 match (1/3), else 2 matches (2/3)
    gts = ["2", "2"] + ["3"] * 8
    assert official_vqa_accuracy("2", gts) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert official_vqa_accuracy("two", ["2"] * 7 + ["two"] * 3) == 1.0
    assert official_vqa_accuracy("4", gts) == 0.0
    # the current vqaEval.py normalizes differing human answers too ("two" -> "2"): every one matches.
    # The 2016 version left them as written: (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert official_vqa_accuracy("2", ["two"] * 8 + ["2"] * 2) == 1.0
    assert official_vqa_accuracy("A Dog.", ["dog", "the dog"] + ["dog."] * 8) == 1.0
    # ten identical human answers: both sides raw, so "2" never matches "two" and "Dog" never matches "dog"
    assert official_vqa_accuracy("2", ["two"] * 10) == 0.0
    assert official_vqa_accuracy("two", ["two"] * 10) == 1.0
    assert official_vqa_accuracy("Dog", ["dog"] * 10) == 0.0
    # the m4c evaluator (TextVQA, VizWiz val) processes both sides
    assert m4c_vqa_accuracy("two", ["two"] * 10) == 1.0
    assert m4c_vqa_accuracy("The Stop.", ["stop"] * 10) == 1.0


def q(qid, **meta):
    return Question(str(qid), "?", None, meta)


def test_gqa_exact_match(tmp_path):
    bench = get_benchmark("gqa", tmp_path)
    questions = [q(1, answer="left"), q(2, answer="red"), q(3, answer="yes")]
    out = bench.score(questions, {"1": "Left.", "2": "red color", "3": "yes"})
    assert out["score"] == pytest.approx(100 * 2 / 3, abs=0.01)


@pytest.mark.parametrize(
    "text, mapped",
    [
        ("Yes", "yes"),
        ("Yes, there is a red circle in the image.", "yes"),
        ("No.", "no"),
        ("There is not a circle.", "no"),
        ("Yes. But no circle.", "yes"),  # only the first sentence counts
        ("no, nothing", "no"),
        ("Nope", "yes"),  # LLaVA's mapping: not one of No/not/no, so yes
        ("I don't see one", "yes"),
    ],
)
def test_pope_sentence_answers(text, mapped):
    assert pope_yes_no(text) == mapped


def test_pope_metrics_and_split_average(tmp_path):
    m = binary_metrics(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 1, 1)
    assert m["precision"] == m["recall"] == m["f1"] == m["accuracy"] == m["yes_ratio"] == 0.5
    questions = [
        q(1, category="random", label="yes"),
        q(2, category="random", label="no"),
        q(3, category="popular", label="yes"),
        q(4, category="popular", label="no"),
    ]
    answers = {"1": "Yes.", "2": "No, there is not.", "3": "Yes", "4": "Yes, there is."}
    out = POPE(tmp_path).score(questions, answers)
    # random: F1 = 1; popular: P = 1/2, R = 1, F1 = 2/3; the paper's number is their mean
    assert out["splits"]["random"]["f1"] == 100.0
    assert out["splits"]["popular"]["f1"] == pytest.approx(66.67)
    assert out["score"] == pytest.approx((100 + 66.67) / 2, abs=0.01)
    assert out["splits"]["popular"]["yes_ratio"] == 100.0  # from the predictions, not the labels


def test_mme_parse_and_acc_plus(tmp_path):
    assert mme_yes_no("Yes") == "yes"
    assert mme_yes_no("yes, it is") == "yes"
    assert mme_yes_no("No") == "no"
    assert mme_yes_no("not sure") == "no"  # "no" in the first four characters
    assert mme_yes_no("The answer is yes") == "other"
    questions = [
        q("c/a/0", subtask="color", image="a", answer="yes"),
        q("c/a/1", subtask="color", image="a", answer="no"),
        q("c/b/0", subtask="color", image="b", answer="yes"),
        q("c/b/1", subtask="color", image="b", answer="no"),
        q("r/c/0", subtask="commonsense_reasoning", image="c", answer="yes"),
        q("r/c/1", subtask="commonsense_reasoning", image="c", answer="no"),
    ]
    answers = {"c/a/0": "Yes", "c/a/1": "No", "c/b/0": "Yes", "c/b/1": "Yes", "r/c/0": "Yes", "r/c/1": "No"}
    out = MME(tmp_path).score(questions, answers)
    assert out["subtasks"]["color"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert out["perception"] == out["score"] == 125.0
    assert out["cognition"] == 200.0


def test_mmbench_option_extraction():
    options = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    assert extract_option("A", options) == "A"
    assert extract_option("(B) blue", options) == "B"
    assert extract_option("The answer is C.", options) == "C"
    assert extract_option("blue", options) == "B"  # no letter: the option's text
    assert extract_option("it is blue or green", options) is None  # two texts: ambiguous
    assert can_infer_option("A or B", options) is None
    assert extract_option("purple", options) is None


def test_mmbench_circular_eval(tmp_path):
    def row(base, k, answer):
        return q(k * CIRCULAR_STRIDE + base, index=k * CIRCULAR_STRIDE + base, options={"A": "x", "B": "y"},
                 answer=answer, category="cat")  # fmt: skip

    questions = [row(1, 0, "A"), row(1, 1, "B"), row(2, 0, "B"), row(2, 1, "A")]
    answers = {"1": "A", str(CIRCULAR_STRIDE + 1): "B.", "2": "B", str(CIRCULAR_STRIDE + 2): "hmm"}
    out = MMBench(tmp_path).score(questions, answers)
    assert out["score"] == 50.0  # question 1 right in every rotation; question 2 misses one
    assert out["unextracted"] == 1
    assert out["circular_groups"] == 2


def test_scienceqa_and_seed(tmp_path):
    assert scienceqa_choice("A") == "A"
    assert scienceqa_choice("B. blue") == "B"
    assert scienceqa_choice("The answer is C.") == "C"
    assert scienceqa_choice("I think D") == "FAILED"
    # whole-answer membership in LLaVA's option list, not a substring of "ABCDE"
    for text in ("AB", "BC", "", "ABCDE"):
        assert scienceqa_choice(text) == "FAILED", text
    assert scienceqa_choice("The answer is A. The answer is B.") == "FAILED"  # two verdicts
    questions = [
        q(1, answer="A", n_choices=3, has_image=True),
        q(2, answer="B", n_choices=3, has_image=False),
    ]
    out = get_benchmark("scienceqa_img", tmp_path).score(questions, {"1": "A", "2": "C"})
    assert (out["score"], out["accuracy"], out["img_questions"]) == (100.0, 50.0, 1)
    out = get_benchmark("scienceqa_img", tmp_path).score(questions, {"1": "AB", "2": ""})
    assert (out["score"], out["accuracy"], out["failed_parse"]) == (0.0, 0.0, 2)
    seed = [
        q(1, answer="A", data_type="image", question_type="t"),
        q(2, answer="B", data_type="image", question_type="t"),
    ]
    assert get_benchmark("seed_bench", tmp_path).score(seed, {"1": "A", "2": "B."})["score"] == 50.0


def test_judge_parsing():
    assert parse_score_pair("8 7\nAssistant 1 is better.") == (8.0, 7.0)
    assert parse_score_pair("8,6.5") == (8.0, 6.5)
    assert parse_score_pair("8 9 \nwhy") is None  # a trailing space is a third field
    # LLaVA's parse_score splits on single spaces after turning commas into spaces: these give three fields
    for review in ("8, 9", " 8 9", "8  9", "8\t9 7"):
        assert parse_score_pair(review) is None, review
    assert parse_score_pair("Both good.") is None  # two fields, not numbers
    assert parse_score_pair("Both are good.") is None
    assert parse_correctness("0.5") == 0.5
    assert parse_correctness("1.0 because it matches") == 1.0
    assert parse_correctness("2") is None
    assert parse_correctness("correct") is None


def test_missing_answer_and_unknown_benchmark(tmp_path):
    from firellava.eval.benchmarks import MissingAnswerError

    with pytest.raises(MissingAnswerError, match="question_id '2'"):
        get_benchmark("gqa", tmp_path).score([q(1, answer="a"), q(2, answer="b")], {"1": "a"})
    with pytest.raises(ValueError, match="unknown benchmark 'vqa3'"):
        get_benchmark("vqa3", tmp_path)


class ScriptedJudgeEngine:
    """An engine that answers every judge prompt with `reply(user_content)` and counts the prompts it got."""

    def __init__(self, model_name, reply):
        self.model_name, self.reply, self.prompts, self.seen = model_name, reply, 0, []

    def generate(self, prompts, params):
        from firellava.engines import Generation

        self.prompts += len(prompts)
        self.seen += [p.messages[-1]["content"] for p in prompts]
        return [Generation(self.reply(c), 10, 1, "stop") for c in self.seen[-len(prompts) :]]


def mmbench_case():
    """Question 1 in two rotations (cat/dog, then dog/cat; the answer is dog both times); question 2 once."""

    def row(index, options, answer):
        listed = "\n".join(f"{k}. {v}" for k, v in options.items())
        meta = {"index": index, "options": options, "answer": answer, "category": "c"}
        return Question(str(index), f"Which pet barks?\n{listed}\n{OPTION_LETTER}", None, meta)

    questions = [
        row(1, {"A": "cat", "B": "dog"}, "B"),
        row(CIRCULAR_STRIDE + 1, {"A": "dog", "B": "cat"}, "A"),
        row(2, {"A": "cat", "B": "dog"}, "A"),
    ]
    # no letter and no option's text in the first answer: only a judge can map it
    answers = {"1": "The one that woofs.", str(CIRCULAR_STRIDE + 1): "A", "2": "A"}
    return questions, answers


def woof_judge(name):
    # maps "woofs" to the dog option, wherever the rotation put it; anything else matches no option
    def reply(content):
        if "woofs" not in content:
            return "Z"
        return "A" if "A. dog" in content else "B"

    return ScriptedJudgeEngine(name, reply)


def test_mmbench_judge_maps_an_answer_without_letter(tmp_path):
    from firellava.eval.judge import Judge

    questions, answers = mmbench_case()
    bench = MMBench(tmp_path)
    # no judge: the letterless answer is wrong, so question 1 fails its circular group, and it is reported
    plain = bench.score(questions, answers)
    assert (plain["score"], plain["unextracted"], plain["judge"], plain["judge_mapped"]) == (50.0, 1, None, 0)
    # a judge maps it to B (dog) and CircularEval counts the mapped letter: both questions right
    engine = woof_judge("judge-a")
    judged = bench.score(questions, answers, Judge(engine))
    assert (judged["score"], judged["unextracted"], judged["judge_mapped"]) == (100.0, 1, 1)
    assert judged["judge"] == "judge-a" and engine.prompts == 1
    assert judged["reviews"]["1"] == {"review": "B", "option": "B"}
    # the judge saw the question with its options and the answer, not the letter instruction
    assert "Which pet barks?\nA. cat\nB. dog" in engine.seen[0] and "The one that woofs." in engine.seen[0]
    assert OPTION_LETTER not in engine.seen[0]
    # a judge reply naming no option (Z) leaves the answer wrong
    refusing = bench.score(questions, answers, Judge(ScriptedJudgeEngine("judge-z", lambda c: "Z")))
    assert (refusing["score"], refusing["judge_asked"], refusing["judge_mapped"]) == (50.0, 1, 0)
    # a group already lost by a rule-extracted letter is not sent to the judge
    lost = {**answers, str(CIRCULAR_STRIDE + 1): "B"}
    skipped = woof_judge("judge-a")
    assert bench.score(questions, lost, Judge(skipped))["judge_asked"] == 0 and skipped.prompts == 0


def test_answer_cache_resumes_after_a_torn_last_line(tmp_path):
    from firellava.eval.answers import AnswerCache

    path = tmp_path / "gqa.jsonl"
    rows = [{"question_id": q, "text": t, "model_id": "m-1"} for q, t in (("1", "a"), ("2", "b"))]
    AnswerCache(path, "m-1").append(rows)
    path.write_text(path.read_text()[:-5])  # killed while writing the second answer
    resumed = AnswerCache(path, "m-1")
    assert resumed.answers() == {"1": "a"}
    # what is appended next starts on its own line, so the file reads back whole
    resumed.append([{**rows[1], "text": "b2"}])
    assert AnswerCache(path, "m-1").answers() == {"1": "a", "2": "b2"}


def test_judge_reviews_are_cached_per_judge_and_prompt(tmp_path):
    from firellava.eval.answers import ReviewCache
    from firellava.eval.benchmarks.judged import LLaVABench
    from firellava.eval.judge import Judge

    path = tmp_path / "reviews" / "mmbench.jsonl"
    questions, answers = mmbench_case()
    first = woof_judge("judge-a")
    assert (
        MMBench(tmp_path).score(questions, answers, Judge(first, cache=ReviewCache(path)))["score"] == 100.0
    )
    assert first.prompts == 1 and path.exists()
    # a rerun (a new process: a fresh cache object reading the file) asks the judge nothing
    again = woof_judge("judge-a")
    out = MMBench(tmp_path).score(questions, answers, Judge(again, cache=ReviewCache(path)))
    assert again.prompts == 0 and out["score"] == 100.0 and out["judge_mapped"] == 1
    # another judge model is asked afresh, and both judges' reviews stay in the file
    other = woof_judge("judge-b")
    MMBench(tmp_path).score(questions, answers, Judge(other, cache=ReviewCache(path)))
    assert other.prompts == 1 and len(ReviewCache(path).records) == 2

    # LLaVA-Bench through the same machinery: an edited answer (a changed prompt) is reviewed again
    bench_q = [
        Question(str(i), f"q{i}", None, {"category": "conv", "caption": "c", "reference": "ref"})
        for i in range(3)
    ]
    bench_a = {str(i): f"answer {i}" for i in range(3)}
    cache_path = tmp_path / "reviews" / "llava_bench.jsonl"
    judge = ScriptedJudgeEngine("judge-a", lambda c: "8 6\nfine")
    out = LLaVABench(tmp_path).score(bench_q, bench_a, Judge(judge, cache=ReviewCache(cache_path)))
    assert out["score"] == 75.0 and judge.prompts == 3
    rerun = ScriptedJudgeEngine("judge-a", lambda c: "1 1")
    out = LLaVABench(tmp_path).score(
        bench_q, {**bench_a, "2": "edited"}, Judge(rerun, cache=ReviewCache(cache_path))
    )
    assert rerun.prompts == 1  # only the edited one; the two cached reviews (8 6) are reused
    assert out["per_category"]["conv"] == pytest.approx(100 * (6 + 6 + 1) / (8 + 8 + 1), abs=0.01)
