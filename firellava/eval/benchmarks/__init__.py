"""The LLaVA-1.5 benchmark suite: name -> benchmark class (loader, prompt, scorer, submission)."""

from __future__ import annotations

from firellava.eval.benchmarks.base import Benchmark, BenchmarkDataError, MissingAnswerError, Question
from firellava.eval.benchmarks.choice import MMBench, MMBenchCN, ScienceQA, SEEDBench
from firellava.eval.benchmarks.judged import LLaVABench, MMVet
from firellava.eval.benchmarks.vqa import GQA, TextVQA, VizWiz, VQAv2
from firellava.eval.benchmarks.yesno import MME, POPE

BENCHMARKS: dict[str, type[Benchmark]] = {
    cls.name: cls
    for cls in (
        VQAv2,
        GQA,
        VizWiz,
        ScienceQA,
        TextVQA,
        POPE,
        MME,
        MMBench,
        MMBenchCN,
        SEEDBench,
        LLaVABench,
        MMVet,
    )
}


def get_benchmark(name: str, root, split: str | None = None) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](root, split)


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "MissingAnswerError", "Question", "get_benchmark"]
