"""The toy LLM's training step under glibc malloc's defaults and under `firellava.core.allocator`'s settings.

glibc reads its settings when a process starts, so each setting runs in a process of its own: rounds of one
process per setting, their order turned round every round (the machine's speed drifts). Each process builds the
demo's toy tokenizer, LLM and examples the same way, takes two warm-up steps, then times the stage's step
(`llm_pretrain.accumulate_batch` and an AdamW step) on the same batches; it reports wall, user and system CPU
time and minor page faults per step.

    .venv/bin/python perf/allocator.py [--steps 20] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

from toy_setup import (  # perf/, next to this script
    REPO,
    demo_toy_world,
    pretraining_examples,
    world_tokenizer,
)

from firellava.core.allocator import TUNED_MALLOC, tuned_environment, uses_glibc

DEFAULTS = "glibc defaults"
TUNED = "firellava.core.allocator"


def environment(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
    return tuned_environment(env) if setting == TUNED else env


def worker(steps: int, threads: int) -> None:
    import torch

    from firellava.toy import llm_pretrain as lp
    from firellava.toy.tiny_models import build_llm

    torch.set_num_threads(threads)
    spec = demo_toy_world("toy_world.coco_images=24", "toy_world.pretrain_images=24")
    tokenizer = world_tokenizer(spec)
    pre = spec.llm_pretrain
    examples = pretraining_examples(spec, tokenizer, 256)
    llm = build_llm(spec.llm, tokenizer, spec.seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=pre.learning_rate)
    batches = [random.Random(i).sample(examples, pre.batch_size) for i in range(steps + 2)]

    def step(batch: list[lp.SceneExample]) -> None:
        optimizer.zero_grad(set_to_none=True)
        lp.accumulate_batch(llm, batch, 0, pre.micro_batch)
        optimizer.step()

    for batch in batches[:2]:
        step(batch)
    usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for batch in batches[2:]:
        step(batch)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    print(
        json.dumps(
            {
                "wall": wall / steps,
                "user": (after.ru_utime - usage.ru_utime) / steps,
                "sys": (after.ru_stime - usage.ru_stime) / steps,
                "faults": (after.ru_minflt - usage.ru_minflt) / steps,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.threads)
    if not uses_glibc():
        raise SystemExit("the settings compared are glibc's; this C library is not glibc")
    settings = [DEFAULTS, TUNED]
    totals = {s: {"wall": 0.0, "user": 0.0, "sys": 0.0, "faults": 0.0} for s in settings}
    command = [sys.executable, __file__, "--worker", f"--steps={args.steps}", f"--threads={args.threads}"]
    for r in range(args.rounds):
        for setting in settings[:: 1 if r % 2 == 0 else -1]:
            out = subprocess.run(
                command, env=environment(setting), cwd=REPO, capture_output=True, text=True, check=True
            )
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  round {r + 1}, {setting}: {figures['wall']:.3f} s per step", flush=True)
            for key, value in figures.items():
                totals[setting][key] += value / args.rounds
    print(f"toy LLM training step ({args.threads} torch threads, {args.steps} steps x {args.rounds} rounds):")
    base = totals[DEFAULTS]["wall"]
    for setting, t in totals.items():
        print(
            f"  {setting}: {t['wall']:.3f} s wall ({base / t['wall']:.2f}x), user {t['user']:.3f} s, "
            f"system {t['sys']:.3f} s, {t['faults']:.0f} minor page faults per step"
        )


if __name__ == "__main__":
    main()
