"""Real benchmark files, not our reading of them: excerpts of LLaVA's question files, the benchmarks' label files
and LLaVA-1.5-13B's released answers (tests/fixtures/llava_eval, sources in its README), scored through
`eval.answers_from=llava` and compared with what LLaVA's own scripts print for the same files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firellava.engines import EngineSpec, SamplingParams
from firellava.eval.benchmarks import get_benchmark
from firellava.eval.benchmarks.yesno import MME_INSTRUCTION, mme_prompt
from firellava.eval.stage import EvalSpec, evaluate

FIXTURES = Path(__file__).parent / "fixtures" / "llava_eval"
MODEL = "llava-v1.5-13b"


def score_released(benchmarks: list[str], out: Path) -> dict:
    engine = EngineSpec("transformers", {}, SamplingParams(max_tokens=8))
    spec = EvalSpec(
        benchmarks=benchmarks,
        checkpoint=str(out / "no-model"),
        model_name=MODEL,
        data_root=str(FIXTURES),
        answers_from="llava",
    )
    evaluate(spec, engine, engine, out)
    return json.loads((out / "results.json").read_text())["benchmarks"]


def test_pope_released_answers_score_as_llava_eval_pope(tmp_path):
    pope = score_released(["pope"], tmp_path)["pope"]
    assert (pope["questions"], pope["answers_unmatched"]) == (36, 0)
    # eval_pope.py on these files: "f1, acc, precision, recall, yes_ratio" per category
    expected = {
        "adversarial": (0.769, 0.750, 0.714, 0.833, 0.583),
        "random": (0.909, 0.917, 1.000, 0.833, 0.417),
        "popular": (0.833, 0.833, 0.833, 0.833, 0.500),
    }
    for category, (f1, acc, precision, recall, yes_ratio) in expected.items():
        got = pope["splits"][category]
        assert [round(got[k] / 100, 3) for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")] == [
            f1,
            acc,
            precision,
            recall,
            yes_ratio,
        ], category
    assert pope["score"] == pytest.approx(100 * (10 / 13 + 10 / 11 + 5 / 6) / 3, abs=0.005)


def test_scienceqa_released_answers_score_as_llava_eval_science_qa(tmp_path):
    sqa = score_released(["scienceqa_img"], tmp_path)["scienceqa_img"]
    # eval_science_qa.py on these files: "Total: 23, Correct: 12, Accuracy: 52.17%, IMG-Accuracy: 50.00%"
    assert (sqa["questions"], sqa["accuracy"], sqa["img_questions"], sqa["score"]) == (23, 52.17, 14, 50.0)
    assert (sqa["failed_parse"], sqa["answers_unmatched"]) == (1, 0)


def write_mme_release(root: Path, rows: list[dict]) -> None:
    """MME's release folder for LLaVA's lines: `<subtask>/<image>` + `.txt` beside it, or `images/` +
    `questions_answers_YN/`, each line MME's question with its instruction after one or two spaces (both occur in
    MME, as `convert_answer_to_mme.py`'s fallback shows)."""
    for n, row in enumerate(rows):
        subtask, *_, name = row["image"].split("/")
        folder = root / "MME" / "MME_Benchmark_release_version" / subtask
        split = "/images/" in row["image"]
        image_dir = folder / "images" if split else folder
        qa_dir = folder / "questions_answers_YN" if split else folder
        image_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        (image_dir / name).write_bytes(b"")
        question = row["text"].split("\n")[0] + ("  " if n % 2 else " ") + MME_INSTRUCTION
        with (qa_dir / f"{Path(name).stem}.txt").open("a", encoding="utf-8") as f:
            f.write(f"{question}\tYes\n")


def test_mme_prompts_are_llava_mme_jsonl_byte_for_byte(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "MME" / "llava_mme.jsonl").open(encoding="utf-8")]
    assert any("？" in r["text"] for r in rows) and any("?" not in r["text"].split("\n")[0] for r in rows)
    write_mme_release(tmp_path, rows)
    loaded = get_benchmark("mme", tmp_path).load()
    expected = {(r["category"], Path(r["image"]).name, r["text"]) for r in rows}
    assert {(q.meta["subtask"], q.meta["image"], q.text) for q in loaded} == expected
    for r in rows:  # whatever spacing MME put before its instruction
        core = r["text"].split("\n")[0]
        assert (
            mme_prompt(f"{core} {MME_INSTRUCTION}") == mme_prompt(f"{core}  {MME_INSTRUCTION}") == r["text"]
        )
    # LLaVA's released answers pair with every question, as convert_answer_to_mme.py pairs them
    answers = FIXTURES / "MME" / "answers" / f"{MODEL}.jsonl"
    (tmp_path / "MME" / "answers").mkdir(parents=True)
    (tmp_path / "MME" / "answers" / f"{MODEL}.jsonl").write_text(answers.read_text(encoding="utf-8"))
    engine = EngineSpec("transformers", {}, SamplingParams(max_tokens=8))
    spec = EvalSpec(
        benchmarks=["mme"],
        checkpoint="no-model",
        model_name=MODEL,
        data_root=str(tmp_path),
        answers_from="llava",
    )
    evaluate(spec, engine, engine, tmp_path / "out")
    mme = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["mme"]
    assert (mme["questions"], mme["answers_unmatched"]) == (len(rows), 0)
