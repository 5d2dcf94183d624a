"""Where the toy world's time goes: the per-step CPU cost of its trainings at the demo's sizes, side by side.

For the toy LLM's text pretraining it prints, in one run: building one example, the mean sequence length, one
training step at the configured batch with 1 and 2 torch threads (one padded batch through HF's loss; one
micro-batch per template; the stage's step, which runs micro-batches of one template and like length; both run
the positions their examples share once and the LM head on supervised positions only; at 2 threads also the
stage's step split between this process and a helper process of one thread each, as the stage runs it from
`steps_beside` on; all in rounds of alternating order on the same batches), and one held-out probe
(the run logs one every `probe_every` steps); for the tower, one pretraining step on drawn scenes with 1 thread,
the whole tower against the tower cut at the feature layer its heads read, alternated. CPU time
(`time.process_time`) is printed beside wall time because the machine may be shared; the ratios are what to
compare.

    .venv/bin/python perf/toy_world_steps.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time

import torch
from toy_setup import demo_toy_world, pretraining_examples, world_tokenizer  # perf/, next to this script

from firellava.toy import llm_pretrain as lp
from firellava.toy import shared_batches
from firellava.toy import vision_pretrain as vp
from firellava.toy.scenes import sample_scene
from firellava.toy.tiny_models import build_llm, build_vision_tower


def timed(fn, repeat: int) -> tuple[float, float]:
    """(wall, cpu) seconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def alternated(
    steps: dict, examples: list, batch_size: int, n: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """(wall, cpu) seconds per step of each variant in `steps`: `rounds` rounds of `n` steps each, the variants'
    order turned round every round (the machine's speed drifts), every variant on the same batches in a round."""
    totals = {name: [0.0, 0.0] for name in steps}
    for r in range(rounds):
        batches = [random.Random(f"{r}/{i}").sample(examples, batch_size) for i in range(n + 1)]
        for name in list(steps)[:: 1 if r % 2 == 0 else -1]:
            step = steps[name]
            step(batches[-1])  # warm-up
            queue = iter(batches[:n])
            wall, cpu = timed(lambda step=step, queue=queue: step(next(queue)), n)
            totals[name][0] += wall / rounds
            totals[name][1] += cpu / rounds
    return {name: (wall, cpu) for name, (wall, cpu) in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps of each variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = demo_toy_world("toy_world.coco_images=24", "toy_world.pretrain_images=24")
    tokenizer = world_tokenizer(spec)
    grid = spec.vision.grid
    pre = spec.llm_pretrain
    n = 256
    wall, cpu = timed(lambda: pretraining_examples(spec, tokenizer, n), 1)
    examples = pretraining_examples(spec, tokenizer, n)
    lengths = [len(e.input_ids) for e in examples]
    print(f"vocab {len(tokenizer)}; LLM pretraining: {pre.steps} steps of {pre.batch_size}")
    print(f"  building one example: {1e3 * wall / n:.2f} ms wall, {1e3 * cpu / n:.2f} ms cpu")
    print(f"  sequence length: mean {sum(lengths) / n:.0f}, max {max(lengths)}")
    llm = build_llm(spec.llm, tokenizer, spec.seed)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=pre.learning_rate)

    # One padded batch with the LM head on every position, as the loop computed it before micro-batches.
    def padded_step(batch: list[lp.SceneExample]) -> None:
        loss = llm(**lp.scene_batch(llm, batch, 0)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def stage_step(batch: list[lp.SceneExample], micro_batch: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        lp.accumulate_batch(llm, batch, 0, micro_batch)
        optimizer.step()

    steps = {
        "one padded batch, HF loss": padded_step,
        "one micro-batch per template": lambda batch: stage_step(batch, pre.batch_size),
        f"the stage's step (micro-batches of at most {pre.micro_batch})": lambda b: stage_step(
            b, pre.micro_batch
        ),
    }
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with contextlib.ExitStack() as stack:
            if threads == 2:
                other = stack.enter_context(shared_batches.helper(llm, 1, 0, pre.micro_batch))

                def shared_step(batch: list[lp.SceneExample], other: shared_batches.Helper = other) -> None:
                    torch.set_num_threads(1)
                    optimizer.zero_grad(set_to_none=True)
                    lp._accumulate(llm, batch, 0, pre.micro_batch, other)
                    optimizer.step()
                    torch.set_num_threads(2)

                steps["the stage's step in two processes of one thread (shared_batches)"] = shared_step
            base = None
            measured = alternated(steps, examples, pre.batch_size, args.steps, args.rounds)
            for name, (wall, cpu) in measured.items():
                base = base or wall
                print(
                    f"  {name}, {threads} thread(s): {wall:.3f} s wall, {cpu:.3f} s cpu (this process; "
                    f"{base / wall:.2f}x); {pre.steps} steps: {pre.steps * wall / 60:.1f} min wall"
                )
    wall, cpu = timed(lambda: lp.probe(llm, tokenizer, 0, grid), 1)
    print(
        f"  one held-out probe: {wall:.2f} s wall, {cpu:.2f} s cpu ({pre.steps // pre.probe_every} in a run)"
    )

    # The tower's pretraining step on drawn scenes, its heads on the feature layer: the whole tower run (as before)
    # against the tower cut at that layer (the stage's), alternated on the same batches.
    tower, _ = build_vision_tower(spec.vision, spec.seed)
    vision = spec.vision_pretrain
    rng = random.Random(0)
    scenes = [sample_scene(rng, vp.SCENE_ID_BASE + i) for i in range(vision.batch_size * (args.steps + 1))]
    pixels, labels = vp.scene_tensors(tower, scenes)
    chunks = torch.arange(len(scenes)).split(vision.batch_size)
    heads = vp._Heads(tower.config.hidden_size)
    opt = torch.optim.Adam([*tower.parameters(), *heads.parameters()])

    def tower_step(cut: bool, index: torch.Tensor) -> None:
        if cut:
            with vp.up_to_feature_layer(tower):
                out = heads(tower, pixels[index])
        else:
            out = heads.read(tower(pixels[index], output_hidden_states=True).hidden_states[vp.FEATURE_LAYER])
        loss = vp._loss(out, {k: v[index] for k, v in labels.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    torch.set_num_threads(1)  # as it trains beside the LLM
    totals = {False: 0.0, True: 0.0}
    for r in range(args.rounds):
        for cut in (False, True) if r % 2 == 0 else (True, False):
            tower_step(cut, chunks[-1])  # warm-up
            queue = iter(chunks)
            totals[cut] += (
                timed(lambda cut=cut, q=queue: tower_step(cut, next(q)), args.steps)[0] / args.rounds
            )
    for cut, name in ((False, "the whole tower"), (True, "cut at the feature layer (the stage's)")):
        print(
            f"tower pretraining, one step of {vision.batch_size}, 1 thread, {name}: {totals[cut]:.3f} s wall "
            f"({totals[False] / totals[cut]:.2f}x); {vision.steps} steps: {vision.steps * totals[cut] / 60:.1f} min"
        )


if __name__ == "__main__":
    main()
