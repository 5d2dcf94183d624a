"""The toy LLM's text-pretraining learning curve: held-out probe accuracies every `--probe-every` steps.

Builds the toy data and tokenizer as the toy world does (the demo's sources, the toy world's default image counts
unless overridden), then pretrains a fresh toy LLM with the configured spec and logs `llm_pretrain.probe` along
the way, with the examples/s of the progress lines. Hydra overrides after `--` change the world, the LLM's shape
or the pretraining spec; comparing settings means two runs with the same threads on an otherwise idle machine.

    .venv/bin/python perf/toy_llm_curve.py --steps 600 --threads 2 -- toy_world.llm.heads=4 \
        toy_world.llm.head_dim=null +toy_world.llm_pretrain.learning_rate=2e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import torch
from toy_setup import demo_toy_world, world_tokenizer  # perf/, next to this script

from firellava.toy import language as lang
from firellava.toy import llm_pretrain as lp
from firellava.toy.tiny_models import build_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    # The colour of the kind named, beside another colour: what the pipeline's probes leave out to save time.
    lp.PROBES = {**lp.PROBES, "colour_bound": lang.colour_bound_qa}
    spec = demo_toy_world("toy_world.coco_images=120", "toy_world.pretrain_images=240", *args.overrides)
    tokenizer = world_tokenizer(spec)
    llm = build_llm(spec.llm, tokenizer, spec.seed)
    pretrain = dataclasses.replace(spec.llm_pretrain, steps=args.steps, probe_every=args.probe_every)
    start = time.perf_counter()
    final = lp.pretrain_llm(llm, tokenizer, pretrain, spec.seed, spec.vision.grid)
    print(f"final held-out {final} after {args.steps} steps, {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
