"""The eval stage end to end on the tiny model: toy files of every benchmark, batched generation through the
engine, the answer cache (resume, foreign model), a judge whose reviews fail to parse, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firellava.engines import EngineSpec, SamplingParams
from firellava.eval.answers import ForeignAnswersError
from firellava.eval.benchmarks import BENCHMARKS, MissingAnswerError
from firellava.eval.stage import EvalSpec, JudgeSpec, evaluate

# max_tokens is the benchmark's (eval.max_new_tokens here); the judge's is its own engine's
ENGINE = EngineSpec("transformers", {"batch_size": 4}, SamplingParams(max_tokens=99, temperature=0.0))
JUDGE = EngineSpec("transformers", {"batch_size": 4}, SamplingParams(max_tokens=3, temperature=0.0))


@pytest.fixture(scope="module")
def checkpoint(tiny_llava, tmp_path_factory):
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    return save_llava(model, processor, tmp_path_factory.mktemp("eval") / "finetune")


def spec(out, checkpoint, **kw) -> EvalSpec:
    base = dict(
        benchmarks=list(BENCHMARKS),
        checkpoint=str(checkpoint),
        model_name="finetune",
        data_root=str(out / "data"),
        splits={"vqav2": "val", "vizwiz": "val"},
        limit=2,
        batch_size=4,
        max_new_tokens=3,
    )
    return EvalSpec(**{**base, **kw})


def run(out, checkpoint, data_root, **kw):
    return evaluate(spec(out, checkpoint, data_root=str(data_root), **kw), ENGINE, JUDGE, out)


@pytest.fixture(scope="module")
def data_root(toy_world):
    """The toy world's benchmark files, in each benchmark's own layout."""
    return Path(toy_world["dir"]) / "data" / "eval"


@pytest.fixture(scope="module")
def first_run(checkpoint, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "eval"
    return out, run(out, checkpoint, data_root)


def test_stage_writes_report_and_scores(first_run):
    out, summary = first_run
    assert summary["dir"] == str(out.resolve())
    assert set(BENCHMARKS) <= set(summary)
    assert summary["generated"] == summary["questions"] > 0
    results = json.loads((out / "results.json").read_text())
    for name, r in results["benchmarks"].items():
        assert r["questions"] >= 1, name
        scale = BENCHMARKS[name].scale
        assert r["score"] is None or 0 <= r["score"] <= scale, name
        samples = (out / "samples" / f"{name}.jsonl").read_text().splitlines()
        assert len(samples) == r["questions"]
        assert {"question_id", "prompt", "answer", "truth"} <= set(json.loads(samples[0]))
    # a 3-token judge cannot write a parsable review: every failure is counted, none is scored
    assert results["benchmarks"]["llava_bench"]["judge_parse_failures"] == 2
    assert results["benchmarks"]["llava_bench"]["score"] is None
    assert results["benchmarks"]["mm_vet"]["judge_parse_failures"] == 2
    table = (out / "results.md").read_text()
    assert "| POPE |" in table and "85.9" in table and "1531.3" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "submissions" / "vqav2_val_submission.json").read_text())[0].keys() == {
        "question_id",
        "answer",
    }
    prompt = json.loads((out / "samples" / "vizwiz.jsonl").read_text().splitlines()[0])["prompt"]
    assert prompt.endswith("respond with 'Unanswerable'.\nAnswer the question using a single word or phrase.")


def test_rerun_uses_cache_and_resumes(first_run, checkpoint, data_root):
    out, summary = first_run
    again = run(out, checkpoint, data_root)
    assert again["generated"] == 0
    assert {k: again[k] for k in BENCHMARKS} == {k: summary[k] for k in BENCHMARKS}
    # the judge's reviews are cached too: LLaVA-Bench and MM-Vet, 2 each (MMBench has no judge model set)
    assert (summary["judge_generated"], again["judge_generated"]) == (4, 0)
    reviews = out / "answers" / "finetune" / "reviews"
    assert sorted(p.name for p in reviews.iterdir()) == ["llava_bench.jsonl", "mm_vet.jsonl"]
    # an interrupted run: one answer lost and the last line torn mid-write
    cache = out / "answers" / "finetune" / "gqa.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text(lines[0] + "\n" + lines[1][:25])
    resumed = run(out, checkpoint, data_root, benchmarks=["gqa"])
    assert resumed["generated"] == 1


def test_named_judge_maps_mmbench_answers_once(first_run, checkpoint, data_root):
    out, _ = first_run
    # cached answers without a letter or an option's text (the prompts are unchanged, so none is regenerated)
    cache = out / "answers" / "finetune" / "mmbench.jsonl"
    original = cache.read_text()
    letterless = [{**json.loads(line), "text": "???"} for line in original.splitlines()]
    cache.write_text("".join(json.dumps(r) + "\n" for r in letterless))
    named = {"benchmarks": ["mmbench"], "judge": JudgeSpec(model=str(checkpoint), model_name="toy-judge")}
    first = run(out, checkpoint, data_root, **named)
    result = json.loads((out / "results.json").read_text())["benchmarks"]["mmbench"]
    assert result["judge"] == "toy-judge"
    # every letterless answer goes to the judge, once; a rerun finds the reviews cached
    assert first["generated"] == 0
    assert result["unextracted"] == result["judge_asked"] == first["judge_generated"] == 2
    assert run(out, checkpoint, data_root, **named)["judge_generated"] == 0
    cache.write_text(original)


def test_bad_inputs(first_run, checkpoint, data_root):
    out, _ = first_run
    with pytest.raises(ValueError, match="unknown benchmark"):
        spec(out, checkpoint, benchmarks=["pope", "vqa3"])
    with pytest.raises(ValueError, match="eval.judge.model_name is required"):
        JudgeSpec(model="judge-model")
    # answers written by another model are refused, not mixed in
    cache = out / "answers" / "finetune" / "pope.jsonl"
    original = cache.read_text()
    first = json.loads(original.splitlines()[0])
    cache.write_text(json.dumps({**first, "model_id": "other-model"}) + "\n" + original)
    with pytest.raises(ForeignAnswersError, match="pope.jsonl:1.*other-model"):
        run(out, checkpoint, data_root, benchmarks=["pope"])
    cache.write_text(original)
    # scoring cached answers only: a question nobody answered is a clear error
    with pytest.raises(MissingAnswerError, match="pope: no answer for 1 of 3"):
        run(out, checkpoint, data_root, benchmarks=["pope"], limit=3, generate=False)


def test_toy_files_are_in_llava_layouts(data_root):
    def rows(*parts):
        return [json.loads(line) for line in data_root.joinpath(*parts).read_text().splitlines()]

    first_ids: dict[str, int] = {}
    for r in rows("pope", "llava_pope_test.jsonl"):
        first_ids.setdefault(r["category"], r["question_id"])
    assert first_ids == {"adversarial": 1, "random": 10_000_001, "popular": 20_000_001}
    labels = rows("pope", "coco", "coco_pope_popular.json")
    assert [r["question_id"] for r in labels] == list(range(1, len(labels) + 1))
    textvqa = rows("textvqa", "llava_textvqa_val_v051_ocr.jsonl")
    assert len({r["question_id"] for r in textvqa}) < len(textvqa)  # image ids, shared between questions
    assert all(r["image"] == f"{r['question_id']}.jpg" for r in textvqa)
    mme_lines = "".join(p.read_text() for p in data_root.glob("MME/*/*/*.txt"))
    assert "?  Please answer yes or no." in mme_lines
    for name in ("pope", "textvqa", "mme"):
        questions = BENCHMARKS[name](data_root).load()
        assert questions and all(" \n" not in q.text for q in questions), name


def test_blind_baseline_is_reported(first_run, checkpoint, data_root):
    out, _ = first_run
    summary = run(out, checkpoint, data_root, benchmarks=["pope", "textvqa"], blind=True)
    assert summary["generated"] == 4  # the image-less answers, two per benchmark; the others are cached
    results = json.loads((out / "results.json").read_text())["benchmarks"]
    for name in ("pope", "textvqa"):
        assert 0 <= results[name]["blind"]["score"] <= 100
        assert summary[f"{name}_blind"] == results[name]["blind"]["score"]
        blind_prompts = (out / "answers" / "finetune" / "blind" / f"{name}.jsonl").read_text().splitlines()
        assert len(blind_prompts) == 2
    assert "| blind (no image) |" in (out / "results.md").read_text()
    # the cached blind answers are reused on a rerun
    assert run(out, checkpoint, data_root, benchmarks=["pope"], blind=True)["generated"] == 0
