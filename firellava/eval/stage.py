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
from firellava.engines import Engine, EngineSpec, build_engine
from firellava.eval.answers import AnswerCache, ReviewCache, generate_missing, model_fingerprint
from firellava.eval.benchmarks import BENCHMARKS, Benchmark, Question, get_benchmark
from firellava.eval.judge import Judge, LazyEngine
from firellava.eval.report import log_wandb, write_report

log = logging.getLogger(__name__)


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
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    wandb: bool = False
    wandb_project: str = "firellava"

    def __post_init__(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        unknown += [b for b in self.splits if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"eval: unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
        if not self.benchmarks:
            raise ValueError("eval.benchmarks is empty")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit must be a positive integer or null, got {self.limit}")

    def tokens_for(self, bench: Benchmark) -> int:
        if isinstance(self.max_new_tokens, int):
            return self.max_new_tokens
        return (self.max_new_tokens or {}).get(bench.name, bench.max_new_tokens)


def _sample_rows(questions: list[Question], cache: AnswerCache, reviews: dict[str, Any]) -> list[dict]:
    rows = []
    for q in questions:
        rec = cache.records[q.qid]
        truth = {k: v for k, v in q.meta.items() if k not in ("row", "options", "caption", "reference")}
        rows.append(
            {
                "question_id": q.qid,
                "prompt": q.text,
                "answer": rec["text"],
                "truth": truth,
                **({"judge": reviews[q.qid]} if q.qid in reviews else {}),
            }
        )
    return rows


def evaluate(spec: EvalSpec, engine: EngineSpec, judge_engine: EngineSpec, out_dir: Path) -> dict[str, Any]:
    """Answer, score and report every benchmark of `spec`: the checkpoint runs as `engine` says, a named judge
    model as `judge_engine` (whose sampling the judge uses either way). Every engine built is closed at the end."""
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
    model_id = f"{model_name}-{model_fingerprint(checkpoint)}"
    caches = {
        b.name: AnswerCache(out_dir / "answers" / model_name / f"{b.name}.jsonl", model_id) for b in benches
    }

    # the evaluated model, loaded on first need: a rerun with every answer and review cached never loads it
    model = LazyEngine(model_id, lambda: build_engine(engine, str(checkpoint), model_id))
    opened.append(model)
    generated = 0
    if spec.generate:
        for b in benches:
            params = replace(engine.sampling, max_tokens=spec.tokens_for(b))
            generated += generate_missing(
                model, b.name, loaded[b.name], caches[b.name], batch_size=spec.batch_size, params=params
            )

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
    for b in benches:
        questions, cache = loaded[b.name], caches[b.name]
        bench_judge = None
        if judge is not None and b in judged:
            bench_judge = judge.with_cache(
                ReviewCache(out_dir / "answers" / model_name / "reviews" / f"{b.name}.jsonl")
            )
        metrics = b.score(questions, cache.answers(), bench_judge)
        judge_generated += bench_judge.generated if bench_judge else 0
        reviews = metrics.pop("reviews", {})
        submission = b.submission(questions, cache.answers(), out_dir / "submissions")
        write_jsonl(out_dir / "samples" / f"{b.name}.jsonl", _sample_rows(questions, cache, reviews))
        results[b.name] = {
            "split": b.split,
            "metric": b.metric,
            "questions": len(questions),
            "offline": b.offline,
            **metrics,
            "published_llava_1_5_13b": b.published,
            "submission": str(submission) if submission else None,
        }
        log.info(
            "%s (%s): %s = %s on %d questions", b.name, b.split, b.metric, metrics["score"], len(questions)
        )

    meta = {
        "model": model_id,
        "checkpoint": str(checkpoint),
        "judge": judge.model_name if judge else None,
        "limit": spec.limit,
        "data_root": str(data_root),
    }
    files = write_report(out_dir, results, meta)
    if spec.wandb:
        log_wandb(spec.wandb_project, results, meta, files["results_png"])
    return {
        "dir": str(out_dir),
        "model": model_id,
        **{name: r["score"] for name, r in results.items()},
        "questions": sum(r["questions"] for r in results.values()),
        "generated": generated,
        "judge_generated": judge_generated,
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(cfg) -> dict[str, Any]:
    spec: EvalSpec = build(cfg.eval)
    return evaluate(spec, build(cfg.engine.eval), build(cfg.engine.judge), Path(build(cfg.paths).eval_dir))
