"""The eval stage: answer every configured benchmark with the finetuned checkpoint, score it like the reference
protocol, and write the report under `<output_dir>/eval/`.

`run(cfg)` builds the `eval`, `engine.eval` and `engine.judge` specs; nothing below it sees a DictConfig.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from firellava.config import build
from firellava.core.io import write_jsonl
from firellava.core.model_card import refresh_model_card
from firellava.core.tracking import active_run
from firellava.engines import Engine, EngineSpec, build_engine
from firellava.eval.answers import (
    AnswerCache,
    ReviewCache,
    generate_missing,
    model_fingerprint,
    read_answer_file,
)
from firellava.eval.benchmarks import BENCHMARKS, Benchmark, Question, get_benchmark
from firellava.eval.judge import Judge, LazyEngine
from firellava.eval.report import log_wandb, write_report

log = logging.getLogger(__name__)
LLAVA_LAYOUT = "llava"  # eval.answers_from: the answer files where LLaVA's own eval scripts write them


@dataclass(frozen=True)
class JudgeSpec:
    """The judge model for LLaVA-Bench and MM-Vet, and for MMBench's option matching where the rules find no
    letter (it runs as engine.judge says). `model: null` lets the evaluated checkpoint judge LLaVA-Bench and
    MM-Vet (toy); MMBench then has no judge fallback."""

    model: str | None = None
    model_name: str | None = None  # the name its cached reviews are keyed by (the config's default: model)

    def __post_init__(self) -> None:
        if self.model is not None and not self.model_name:
            raise ValueError("eval.judge.model_name is required with eval.judge.model (it keys the reviews)")


@dataclass(frozen=True)
class EvalSpec:
    benchmarks: list[str]
    checkpoint: str
    model_name: str  # answers are cached under answers/<model_name>/
    data_root: str  # LLaVA's playground/data/eval layout
    splits: dict[str, str] = field(default_factory=dict)  # benchmark -> split (default: the scored one)
    limit: int | None = None  # first N questions per benchmark, for smoke runs
    batch_size: int = 8  # answers per engine call, each batch saved before the next
    max_new_tokens: int | dict[str, int] | None = None  # default: LLaVA's per benchmark (128 / 1024)
    generate: bool = True  # false: score the cached answers only (a missing one is an error)
    # answer files in LLaVA's format to score as they are, no model loaded: a folder of <benchmark>.jsonl or
    # {benchmark: file}
    answers_from: str | dict[str, str] | None = None
    blind: bool = False  # also answer every question without its image: the report's blind baseline
    judge: JudgeSpec = field(default_factory=JudgeSpec)

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        unknown += [b for b in self.splits if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"eval: unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
        if not self.benchmarks:
            raise ValueError("eval.benchmarks is empty")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit must be a positive integer or null, got {self.limit}")
        if self.answers_from is not None and self.blind:
            raise ValueError("eval.blind asks the model, so it cannot be combined with eval.answers_from")

    def answer_file(self, bench: Benchmark) -> Path:
        """Where eval.answers_from keeps `bench`'s answers: `llava` is where LLaVA's scripts (and its eval.zip)
        leave them under eval.data_root for model eval.model_name; another string is a folder of
        <benchmark>.jsonl; a mapping names each file."""
        if self.answers_from == LLAVA_LAYOUT:
            if bench.split not in bench.llava_answers:
                raise ValueError(
                    f"eval.answers_from=llava: LLaVA's scripts write no {bench.name} {bench.split} answers"
                )
            return Path(self.data_root) / bench.llava_answers[bench.split].format(model=self.model_name)
        if isinstance(self.answers_from, str):
            return Path(self.answers_from) / f"{bench.name}.jsonl"
        if bench.name not in (self.answers_from or {}):
            raise ValueError(f"eval.answers_from names no answer file for {bench.name!r}")
        return Path(self.answers_from[bench.name])

    def tokens_for(self, bench: Benchmark) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        return (self.max_new_tokens or {}).get(bench.name, bench.max_new_tokens)


def _sample_rows(questions: list[Question], answers: dict[str, str], reviews: dict[str, Any]) -> list[dict]:
    rows = []
    for q in questions:
        truth = {k: v for k, v in q.meta.items() if k not in ("row", "options", "caption", "reference")}
        rows.append(
            {
                "question_id": q.qid,
                "prompt": q.text,
                "answer": answers[q.qid],
                "truth": truth,
                **({"judge": reviews[q.qid]} if q.qid in reviews else {}),
            }
        )
    return rows


def blind(questions: list[Question]) -> list[Question]:
    """The same questions without their images: what a model gets right from the text alone."""
    return [replace(q, image=None) for q in questions]


def evaluate(spec: EvalSpec, engine: EngineSpec, judge_engine: EngineSpec, out_dir: Path) -> dict[str, Any]:
    """Answer, score and report every benchmark of `spec`: the checkpoint runs as `engine` says, a named judge
    model as `judge_engine` (whose sampling the judge uses either way). With `spec.answers_from` the answers
    are read from those files instead and no model is loaded unless it must judge. Every engine built is closed
    at the end."""
    opened: list[LazyEngine] = []
    try:
        return _evaluate(spec, engine, judge_engine, out_dir, opened)
    finally:
        for model in opened:
            model.close()


def _evaluate(
    spec: EvalSpec, engine: EngineSpec, judge_engine: EngineSpec, out_dir: Path, opened: list[LazyEngine]
) -> dict[str, Any]:
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    checkpoint, data_root = Path(spec.checkpoint), Path(spec.data_root)
    benches = [get_benchmark(n, data_root, spec.splits.get(n)) for n in spec.benchmarks]
    loaded = {b.name: b.load()[: spec.limit] for b in benches}  # every file is read before any generation
    model_name = spec.model_name
    external = spec.answers_from is not None
    model_id = model_name if external else f"{model_name}-{model_fingerprint(checkpoint)}"

    # the evaluated model, loaded on first need: a rerun with every answer and review cached never loads it
    model = LazyEngine(model_id, lambda: build_engine(engine, str(checkpoint), model_id))
    opened.append(model)
    answers: dict[str, dict[str, str]] = {}
    unmatched: dict[str, int] = {}
    blind_answers: dict[str, dict[str, str]] = {}
    generated = 0
    runs = []  # (benchmark, questions, answer subfolder, where its answers go); all caches are read first
    for b in benches:
        if external:
            answers[b.name], unmatched[b.name] = read_answer_file(b, loaded[b.name], spec.answer_file(b))
            continue
        runs.append((b, loaded[b.name], "", answers))
        if spec.blind:
            runs.append((b, blind(loaded[b.name]), "blind/", blind_answers))
    caches = [
        AnswerCache(out_dir / "answers" / model_name / sub / f"{b.name}.jsonl", model_id)
        for b, _, sub, _ in runs
    ]
    for (b, questions, _, into), cache in zip(runs, caches):
        if spec.generate:
            params = replace(engine.sampling, max_tokens=spec.tokens_for(b))
            generated += generate_missing(
                model, b.name, questions, cache, batch_size=spec.batch_size, params=params
            )
        into[b.name] = cache.answers()

    judge = None
    js = spec.judge
    judged = [b for b in benches if b.judged or (b.judge_fallback and js.model is not None)]
    if judged:
        judge_model: Engine = model
        if js.model is not None:
            # the name keys the cached reviews, so it is given to the engine rather than left to the backend
            judge_model = LazyEngine(
                js.model_name, lambda: build_engine(judge_engine, js.model, js.model_name)
            )
            opened.append(judge_model)
        judge = Judge(judge_model, judge_engine.sampling)

    results: dict[str, dict[str, Any]] = {}
    judge_generated = 0

    def score(b: Benchmark, questions: list[Question], got: dict[str, str]) -> dict[str, Any]:
        nonlocal judge_generated
        bench_judge = None
        if judge is not None and b in judged:
            bench_judge = judge.with_cache(
                ReviewCache(out_dir / "answers" / model_name / "reviews" / f"{b.name}.jsonl")
            )
        metrics = b.score(questions, got, bench_judge)
        judge_generated += bench_judge.generated if bench_judge else 0
        return metrics

    for b in benches:
        questions = loaded[b.name]
        metrics = score(b, questions, answers[b.name])
        reviews = metrics.pop("reviews", {})
        submission = b.submission(questions, answers[b.name], out_dir / "submissions")
        write_jsonl(
            out_dir / "samples" / f"{b.name}.jsonl", _sample_rows(questions, answers[b.name], reviews)
        )
        results[b.name] = {
            "split": b.split,
            "metric": b.metric,
            "questions": len(questions),
            "offline": b.offline,
            **metrics,
            "published_llava_1_5_13b": b.published,
            "submission": str(submission) if submission else None,
        }
        if external:
            results[b.name]["answers_file"] = str(spec.answer_file(b))
            results[b.name]["answers_unmatched"] = unmatched[b.name]
        if b.name in blind_answers:
            blind_metrics = score(b, blind(questions), blind_answers[b.name])
            blind_metrics.pop("reviews", None)
            results[b.name]["blind"] = blind_metrics
        log.info(
            "%s (%s): %s = %s on %d questions", b.name, b.split, b.metric, metrics["score"], len(questions)
        )

    meta = {
        "model": model_id,
        "checkpoint": None if external else str(checkpoint),
        "answers_from": spec.answers_from,
        "judge": judge.model_name if judge else None,
        "limit": spec.limit,
        "data_root": str(data_root),
    }
    files = write_report(out_dir, results, meta)
    if not external:
        card = refresh_model_card(checkpoint, {**meta, "benchmarks": results}, out_dir)
        if card is not None:
            log.info("model card with these results: %s", card)
    run = active_run()
    if run is not None:
        log_wandb(run, results, files["results_png"])
    return {
        "dir": str(out_dir),
        "model": model_id,
        **{name: r["score"] for name, r in results.items()},
        **{f"{name}_blind": r["blind"]["score"] for name, r in results.items() if "blind" in r},
        "questions": sum(r["questions"] for r in results.values()),
        "generated": generated,
        "judge_generated": judge_generated,
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(cfg) -> dict[str, Any]:
    spec: EvalSpec = build(cfg.eval)
    return evaluate(spec, build(cfg.engine.eval), build(cfg.engine.judge), Path(build(cfg.paths).eval_dir))
