"""The datagen stage's record filters at production scale: 158K synthetic generations (58K conversation, 23K
detail, 77K complex reasoning, LLaVA-Instruct's counts) on 80K synthetic COCO images with the 80 categories, run
through `build_records` with the grounding check and near-duplicate removal, and side by side without them (the
parser and exact-duplicate check alone), in one process. Answers name annotated and unannotated categories and
state right and wrong counts; a share of them repeat an earlier answer with one word changed.

    .venv/bin/python perf/datagen_filters.py               # full scale
    .venv/bin/python perf/datagen_filters.py --scale 0.1   # a quick look
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.core.neardup import NearDupIndex, NearDupSpec  # noqa: E402
from firellava.datagen.contexts import TYPES, ImageContext, Instance  # noqa: E402
from firellava.datagen.grounding import GroundingCheck, GroundingSpec, GroundingTally, plural  # noqa: E402
from firellava.datagen.outputs import Provenance, build_records  # noqa: E402
from firellava.datagen.parse import ParseRules  # noqa: E402
from firellava.datagen.prompts import format_response  # noqa: E402
from firellava.datagen.synonyms import SYNONYMS  # noqa: E402

COUNTS = {"conversation": 58_000, "detail": 23_000, "complex_reasoning": 77_000}
CATEGORIES = list(SYNONYMS)
NUMBER = ["no", "one", "two", "three", "four", "five"]
FILLER_TEXT = (
    "the scene looks calm and the light suggests late afternoon with soft shadows across the ground while the "
    "background stays slightly blurred which draws attention to the main subject in the middle of the frame"
)
FILLER = FILLER_TEXT.split()


def context(rng: random.Random, image_id: int) -> ImageContext:
    cats = rng.sample(CATEGORIES, rng.randint(1, 5))
    instances = tuple(Instance(c, (0.0, 0.0, 10.0, 10.0)) for c in cats for _ in range(rng.randint(1, 4)))
    captions = tuple(f"A {cats[0]} next to a {rng.choice(cats)} in a photo number {k}." for k in range(5))
    return ImageContext(image_id, f"{image_id:012d}.jpg", 640, 480, captions, instances)


def sentence(rng: random.Random, ctx: ImageContext) -> str:
    present = [i.category for i in ctx.instances]
    cat = rng.choice(present) if rng.random() < 0.9 else rng.choice(CATEGORIES)
    n = rng.choice([present.count(cat), rng.randint(0, 5)]) if rng.random() < 0.3 else None
    filler = " ".join(rng.sample(FILLER, 12))
    if n is None:
        return f"There is a {cat} near the {rng.choice(present)}, and {filler}."
    return f"There are {NUMBER[min(n, 5)]} {plural(cat) if n != 1 else cat} in the picture, {filler}."


def rows(scale: float, seed: int = 0) -> tuple[dict[int, ImageContext], list[dict]]:
    rng = random.Random(seed)
    contexts = {i: context(rng, i) for i in range(1, round(80_000 * scale) + 1)}
    ids = list(contexts)
    out: list[dict] = []
    for kind, count in COUNTS.items():
        prev = None
        for k in range(round(count * scale)):
            if (
                prev is not None and rng.random() < 0.02
            ):  # a near-copy of the previous record: one word changed
                ctx, answers = prev[0], [prev[1][0].replace(" the ", " a ", 1), *prev[1][1:]]
            else:
                ctx = contexts[rng.choice(ids)]
                answers = [" ".join(sentence(rng, ctx) for _ in range(rng.randint(2, 5)))]
                if kind == "conversation":
                    answers += [sentence(rng, ctx) for _ in range(rng.randint(1, 3))]
            prev = (ctx, answers)
            row = {"id": f"{kind}-{k:012d}", "type": kind, "image_id": ctx.image_id, "finish_reason": "stop"}
            if kind == "detail":
                row |= {"question": "Describe the image in detail.", "text": answers[0]}
            else:
                pairs = [
                    (f"What can you tell about part {j} of the image?", a) for j, a in enumerate(answers)
                ]
                row["text"] = format_response(kind, pairs[:1] if kind == "complex_reasoning" else pairs)
            out.append(row)
    return contexts, out


def run(contexts, data, filters: bool) -> tuple[float, float, dict, list]:
    start, cpu = time.perf_counter(), time.process_time()
    grounding = GroundingCheck(GroundingSpec(), contexts, CATEGORIES) if filters else None
    tally = GroundingTally(TYPES, 3)
    near = {t: NearDupIndex(NearDupSpec()) for t in TYPES} if filters else None
    records, rejected = build_records(
        data, contexts, "coco/train2017", Provenance("t", "l", True), ParseRules(), grounding, tally, near
    )
    return time.perf_counter() - start, time.process_time() - cpu, tally.summary(), rejected


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    start = time.perf_counter()
    contexts, data = rows(args.scale)
    print(
        f"{len(data):,} synthetic generations on {len(contexts):,} images, built in {time.perf_counter() - start:.0f}s"
    )
    wall_plain, cpu_plain, _, _ = run(contexts, data, filters=False)
    wall, cpu, summary, rejected = run(contexts, data, filters=True)
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    o = summary["overall"]
    print(f"parse + exact duplicates only: {wall_plain:.1f}s wall, {cpu_plain:.1f}s CPU")
    print(
        f"with grounding + near-duplicates: {wall:.1f}s wall, {cpu:.1f}s CPU "
        f"(filters alone {cpu - cpu_plain:.1f}s CPU, {1e6 * (cpu - cpu_plain) / len(data):.0f} us/record)"
    )
    print(f"  rejected by reason: {reasons}")
    print(
        f"  CHAIR_i {o['chair_i']}, CHAIR_s {o['chair_s']}, {o['count_mismatches']:,} count mismatches in "
        f"{o['count_claims']:,} claims"
    )


if __name__ == "__main__":
    main()
