"""Where the toy world's time goes: the per-step CPU cost of its trainings at the demo's sizes, side by side.

For the toy LLM's text pretraining it prints, in one run: building one example, one training step at the
configured batch (1 and 2 torch threads), one held-out probe (the run logs one every 200 steps), and the mean
sequence length; for the tower, one training step. CPU time (`time.process_time`) is printed beside wall time
because the machine may be shared; the ratios are what to compare.

    .venv/bin/python perf/toy_world_steps.py [--steps 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.config import build  # noqa: E402
from firellava.toy import llm_pretrain as lp  # noqa: E402
from firellava.toy.data import build_toy_data  # noqa: E402
from firellava.toy.scenes import COLOURS, SHAPES  # noqa: E402
from firellava.toy.stage import corpus  # noqa: E402
from firellava.toy.tiny_models import build_llm, build_vision_tower, train_tokenizer  # noqa: E402


def timed(fn, repeat: int) -> tuple[float, float]:
    """(wall, cpu) seconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    from hydra import compose, initialize_config_dir

    from firellava.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=demo"])
    spec = build(cfg.toy_world)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_toy_data(
            Path(tmp), seed=spec.seed, coco_images=24, pretrain_images=24, per_source=dict(spec.per_source)
        )
        tokenizer = train_tokenizer(corpus(data), spec.vocab_size, words=[*COLOURS, *SHAPES])
    grid = spec.vision.grid
    pre = spec.llm_pretrain
    n = 256
    example_spec = lp.LlmPretrainSpec(steps=1, batch_size=n, plain_fraction=pre.plain_fraction)
    wall, cpu = timed(lambda: lp._examples(example_spec, tokenizer, 0, grid), 1)
    examples = lp._examples(example_spec, tokenizer, 0, grid)
    lengths = [len(e.input_ids) for e in examples]
    print(f"vocab {len(tokenizer)}; LLM pretraining: {pre.steps} steps of {pre.batch_size}")
    print(f"  building one example: {1e3 * wall / n:.2f} ms wall, {1e3 * cpu / n:.2f} ms cpu")
    print(f"  sequence length: mean {sum(lengths) / n:.0f}, max {max(lengths)}")
    llm = build_llm(spec.llm, tokenizer, spec.seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=pre.learning_rate)
    rng = random.Random(0)

    def step() -> None:
        loss = llm(**lp.scene_batch(llm, rng.sample(examples, pre.batch_size), 0)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for threads in (1, 2):
        torch.set_num_threads(threads)
        step()  # warm-up
        wall, cpu = timed(step, args.steps)
        print(
            f"  one step, {threads} thread(s): {wall:.3f} s wall, {cpu:.3f} s cpu; "
            f"{pre.steps} steps: {pre.steps * wall / 60:.1f} min wall"
        )
    wall, cpu = timed(lambda: lp.probe(llm, tokenizer, 0, grid), 1)
    print(f"  one held-out probe: {wall:.2f} s wall, {cpu:.2f} s cpu ({pre.steps // 200} in a run)")

    tower, _ = build_vision_tower(spec.vision, spec.seed)
    pixels = torch.randn(spec.vision_pretrain.batch_size, 3, spec.vision.image_size, spec.vision.image_size)
    opt = torch.optim.Adam(tower.parameters())

    def tower_step() -> None:
        out = tower(pixel_values=pixels).last_hidden_state
        loss = out.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tower_step()
    wall, cpu = timed(tower_step, args.steps)
    steps = spec.vision_pretrain.steps
    print(
        f"tower pretraining: one step of {spec.vision_pretrain.batch_size}: {wall:.3f} s wall, {cpu:.3f} s cpu; "
        f"{steps} steps: {steps * wall / 60:.1f} min wall"
    )


if __name__ == "__main__":
    main()
