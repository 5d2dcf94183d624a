"""The judge: any model behind the engine interface (an open LLM, a served endpoint, or GPT-4 through the
OpenAI-compatible backend) grades free-form answers. Greedy, so that a rerun gives the same reviews."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from pipeline.engines import Engine, Prompt, SamplingParams

log = logging.getLogger(__name__)


class Judge:
    def __init__(self, engine: Engine, max_tokens: int = 256) -> None:
        self.engine = engine
        self.params = SamplingParams(max_tokens=max_tokens, temperature=0.0)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def review(self, system: str, contents: Sequence[str]) -> list[str]:
        start = time.perf_counter()
        prompts = [
            Prompt(messages=[{"role": "system", "content": system}, {"role": "user", "content": c}])
            for c in contents
        ]
        out = [g.text for g in self.engine.generate(prompts, self.params)]
        took = time.perf_counter() - start
        log.info(
            "judge %s: %d reviews in %.1fs (%.2f/s)",
            self.model_name,
            len(out),
            took,
            len(out) / max(took, 1e-9),
        )
        return out


def parse_score_pair(review: str) -> tuple[float, float] | None:
    """LLaVA `eval_gpt_review_bench.parse_score`: the first line holds exactly two numbers."""
    first = review.strip().split("\n")[0].replace(",", " ")
    parts = first.split()
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def parse_correctness(review: str) -> float | None:
    """The MM-Vet grader's reply is one number in [0, 1]; anything else is a parse failure."""
    match = re.match(r"\s*([01](?:\.\d+)?|\.\d+)\b", review)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 1.0 else None
