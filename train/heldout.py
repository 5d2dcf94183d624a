"""Held-out check of a finetuned toy model: short questions about fresh toy scenes, exact-match accuracy.

The scenes are drawn with a seed and image ids the toy world never uses, and the questions come from the toy
world's own generators, asked in the VQAv2 short-answer format the mix teaches. Chance: colour 1/6, shape 1/3,
count 1/3, exists ("is there a <colour> <shape>", yes and no equally often) 1/2.
`python -m train.heldout <model_dir> [n] [seed]` prints the accuracies as JSON.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from pipeline.engines import build_engine
from pipeline.engines.base import Prompt, SamplingParams
from pipeline.toy_world import language as lang
from pipeline.toy_world.scenes import COLOURS, SHAPES, draw_scene, sample_scene

HELDOUT_ID_BASE = 900_000_000
QUESTIONS = {
    "colour": lang.colour_qa,
    "shape": lang.shape_qa,
    "count": lang.count_qa,
    "exists": lang.exists_qa,
}
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / 3, "exists": 1 / 2}


def heldout_questions(n: int, seed: int) -> list[tuple[str, str, str, Any]]:
    """(kind, question, answer, image) for `n` fresh scenes per kind."""
    rng = random.Random(seed)
    out = []
    for kind, make in QUESTIONS.items():
        made = 0
        while made < n:
            scene = sample_scene(rng, HELDOUT_ID_BASE + len(out) + made * 7 + rng.randint(0, 6))
            qa = make(scene, rng)
            if qa is None:
                continue
            out.append((kind, qa[0], qa[1], draw_scene(scene)))
            made += 1
    return out


def heldout_accuracy(model_dir: str | Path, n: int = 60, seed: int = 12345) -> dict[str, Any]:
    engine = build_engine("transformers", model=str(model_dir), batch_size=16)
    items = heldout_questions(n, seed)
    prompts = [
        Prompt(
            messages=[{"role": "user", "content": f"<image>\n{q}\n{lang.SHORT_ANSWER_PROMPT}"}],
            images=[image],
        )
        for _, q, _, image in items
    ]
    generations = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    correct: dict[str, int] = dict.fromkeys(QUESTIONS, 0)
    for (kind, _, answer, _), gen in zip(items, generations):
        correct[kind] += gen.text.strip().strip(".").lower() == answer.lower()
    return {
        kind: {"accuracy": round(correct[kind] / n, 3), "chance": round(CHANCE[kind], 3), "n": n}
        for kind in QUESTIONS
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m train.heldout <model_dir> [n] [seed]")
    n = int(args[1]) if len(args) > 1 else 60
    seed = int(args[2]) if len(args) > 2 else 12345
    print(json.dumps(heldout_accuracy(args[0], n, seed), indent=2))
