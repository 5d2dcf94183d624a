"""Held-out check of a finetuned toy model: short questions about fresh toy scenes, exact-match accuracy.

The scenes are drawn with a seed and image ids the toy world never uses, and the questions come from the toy
world's own generators, asked in the VQAv2 short-answer format the mix teaches. Chance: colour 1/6, shape 1/3,
count 1/3, exists ("is there a <colour> <shape>", yes and no equally often) 1/2. `named_object` checks that
answers depend on the object a question names (see `heldout_accuracy`).
`python -m firellava.toy.heldout <model_dir> [n] [seed]` prints the accuracies as JSON.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.core.instructions import SHORT_ANSWER
from firellava.engines import EngineSpec, build_engine
from firellava.engines.base import Prompt, SamplingParams
from firellava.toy import language as lang
from firellava.toy.scenes import COLOURS, SHAPES, draw_scene, sample_scene

HELDOUT_ID_BASE = 900_000_000
NAMED_OBJECT_ID_OFFSET = 50_000_000
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


def named_object_questions(n: int, seed: int) -> list[tuple[lang.QA, lang.QA, Any]]:
    """`n` fresh scenes with two shapes of different kinds and colours, each kind there once, and the colour
    question for each: a model that reads the kind named answers the two differently, one that answers from the
    image alone gives both the same answer."""
    rng = random.Random(seed + 1)
    out: list[tuple[lang.QA, lang.QA, Any]] = []
    while len(out) < n:
        scene = sample_scene(rng, HELDOUT_ID_BASE + NAMED_OBJECT_ID_OFFSET + len(out) * 7 + rng.randint(0, 6))
        single = [s for s in scene.shapes if sum(o.kind == s.kind for o in scene.shapes) == 1]
        pair = next(((a, b) for a, b in itertools.combinations(single, 2) if a.colour != b.colour), None)
        if pair is not None:
            first, second = ((f"What color is the {s.kind}?", s.colour) for s in pair)
            out.append((first, second, draw_scene(scene)))
    return out


def _prompt(question: str, image: Any) -> Prompt:
    return Prompt(
        messages=[{"role": "user", "content": f"{IMAGE_TOKEN}\n{question}\n{SHORT_ANSWER}"}],
        images=[image],
    )


def heldout_accuracy(model_dir: str | Path, n: int = 60, seed: int = 12345) -> dict[str, Any]:
    """Accuracy per question kind, and `named_object`: on two-kind scenes, how often the model gave the colour
    questions about the two kinds the same answer (`same_answer`) and how often it was right (`accuracy`)."""
    engine = build_engine(EngineSpec("transformers", {"batch_size": 16}), str(model_dir))
    items = heldout_questions(n, seed)
    pairs = named_object_questions(n, seed)
    prompts = [_prompt(q, image) for _, q, _, image in items]
    asked = [(qa, image) for first, second, image in pairs for qa in (first, second)]
    prompts += [_prompt(q, image) for (q, _), image in asked]
    texts = [
        g.text.strip().strip(".").lower()
        for g in engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    ]
    correct: dict[str, int] = dict.fromkeys(QUESTIONS, 0)
    for (kind, _, answer, _), text in zip(items, texts):
        correct[kind] += text == answer.lower()
    result: dict[str, Any] = {
        kind: {"accuracy": round(correct[kind] / n, 3), "chance": round(CHANCE[kind], 3), "n": n}
        for kind in QUESTIONS
    }
    answered = texts[len(items) :]
    same = sum(a == b for a, b in zip(answered[::2], answered[1::2]))
    right = sum(text == answer for text, ((_, answer), _) in zip(answered, asked))
    result["named_object"] = {
        "same_answer": round(same / n, 3),
        "accuracy": round(right / (2 * n), 3),
        "n": n,
    }
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m firellava.toy.heldout <model_dir> [n] [seed]")
    n = int(args[1]) if len(args) > 1 else 60
    seed = int(args[2]) if len(args) > 2 else 12345
    print(json.dumps(heldout_accuracy(args[0], n, seed), indent=2))
