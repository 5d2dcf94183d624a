"""The judge: any model behind the engine interface (an open LLM, a served endpoint, or GPT-4 through the
OpenAI-compatible backend) grades free-form answers. Greedy (engine.judge.sampling), so that a rerun gives the same
reviews; with a `ReviewCache` a rerun asks only for the reviews it lacks."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from firellava.core.progress import Progress
from firellava.engines import Engine, Generation, Prompt, SamplingParams, close_engine

if TYPE_CHECKING:  # eval.answers imports the benchmarks, which import this module
    from firellava.eval.answers import ReviewCache

log = logging.getLogger(__name__)


def review_key(judge: str, max_tokens: int, system: str, content: str) -> str:
    """What a review depends on: the judge model, its token budget and the exact prompt (system + user)."""
    blob = json.dumps([judge, max_tokens, system, content], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LazyEngine:
    """An engine that is built on its first `generate`, so a run whose reviews are all cached never loads the
    judge model. `model_name` must be the name the built engine will carry (it keys the cached reviews)."""

    def __init__(self, model_name: str, build: Callable[[], Engine]) -> None:
        self.model_name = model_name
        self._build = build
        self._engine: Engine | None = None

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        if self._engine is None:
            self._engine = self._build()
        return self._engine.generate(prompts, params)

    def close(self) -> None:
        engine, self._engine = self._engine, None
        close_engine(engine)


GREEDY = SamplingParams(max_tokens=256, temperature=0.0)


class Judge:
    def __init__(
        self,
        engine: Engine,
        params: SamplingParams = GREEDY,
        cache: ReviewCache | None = None,
        save_every: int = 64,
    ) -> None:
        self.engine = engine
        self.params = params
        self.cache = cache
        self.save_every = save_every  # reviews per engine call, each batch saved before the next one
        self.generated = 0  # reviews this judge asked its engine for (cache misses)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def with_cache(self, cache: ReviewCache) -> Judge:
        """The same judge model, reading and writing reviews in `cache` (one per benchmark)."""
        return Judge(self.engine, self.params, cache, self.save_every)

    def review(self, system: str, contents: Sequence[str]) -> list[str]:
        """One review per content, in order; cached ones are not asked again, identical prompts only once."""
        keys = [review_key(self.model_name, self.params.max_tokens, system, c) for c in contents]
        known = {k: r["review"] for k, r in (self.cache.records if self.cache else {}).items()}
        todo = list({k: c for k, c in zip(keys, contents) if k not in known}.items())
        if not todo:
            if contents:
                log.info("judge %s: all %d reviews cached", self.model_name, len(contents))
            return [known[k] for k in keys]
        progress = Progress(f"judge {self.model_name}", len(todo), unit="reviews", logger=log)
        progress.extra = f"{len(contents) - len(todo)} cached"
        for i in range(0, len(todo), self.save_every):
            batch = todo[i : i + self.save_every]
            prompts = [
                Prompt(messages=[{"role": "system", "content": system}, {"role": "user", "content": c}])
                for _, c in batch
            ]
            generations = self.engine.generate(prompts, self.params)
            records = [
                {"key": k, "judge": self.model_name, "review": g.text, "finish_reason": g.finish_reason}
                for (k, _), g in zip(batch, generations)
            ]
            known.update((r["key"], r["review"]) for r in records)
            if self.cache is not None:
                self.cache.put(records)
            self.generated += len(batch)
            progress.update(len(batch))
        progress.close()
        return [known[k] for k in keys]


def parse_score_pair(review: str) -> tuple[float, float] | None:
    """LLaVA `eval_gpt_review_bench.parse_score`: the first line, commas turned into spaces, split on single
    spaces, must give exactly two numbers. So "8 9" and "8,9" parse, while "8, 9", " 8 9" and "8  9" give
    three fields and fail (LLaVA records [-1, -1] for them; here they are None and counted)."""
    fields = review.split("\n")[0].replace(",", " ").split(" ")
    if len(fields) != 2:
        return None
    try:
        return float(fields[0]), float(fields[1])
    except ValueError:
        return None


def parse_correctness(review: str) -> float | None:
    """The MM-Vet grader's reply is one number in [0, 1]; anything else is a parse failure."""
    match = re.match(r"\s*([01](?:\.\d+)?|\.\d+)\b", review)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 1.0 else None
