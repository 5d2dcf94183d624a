"""The toy LLM's text-pretraining learning curve: held-out probe accuracies every `--probe-every` steps.

Builds the toy data and tokenizer as the toy world does (the demo's sources, the toy world's default image counts
unless overridden), then pretrains a fresh toy LLM with the configured spec and logs `llm_pretrain.probe` along
the way, with the examples/s of the progress lines. Hydra overrides after `--` change the world, the LLM's shape
or the pretraining spec; comparing settings means two runs with the same threads on an otherwise idle machine.

    .venv/bin/python perf/toy_llm_curve.py --steps 600 --threads 2 -- toy_world.llm.heads=4 \
        toy_world.llm.head_dim=null toy_world.llm_pretrain.learning_rate=2e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.config import CONF_DIR, build  # noqa: E402
from firellava.toy import llm_pretrain as lp  # noqa: E402
from firellava.toy.data import build_toy_data  # noqa: E402
from firellava.toy.scenes import COLOURS, SHAPES  # noqa: E402
from firellava.toy.stage import corpus  # noqa: E402
from firellava.toy.tiny_models import build_llm, train_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--probe-every", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    lp.PROBE_EVERY = args.probe_every
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        world = ["experiment=demo", "toy_world.coco_images=120", "toy_world.pretrain_images=240"]
        cfg = compose(config_name="config", overrides=[*world, *args.overrides])
    spec = build(cfg.toy_world)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_toy_data(
            Path(tmp),
            seed=spec.seed,
            coco_images=spec.coco_images,
            pretrain_images=spec.pretrain_images,
            per_source=dict(spec.per_source),
        )
        tokenizer = train_tokenizer(corpus(data), spec.vocab_size, words=[*COLOURS, *SHAPES])
    llm = build_llm(spec.llm, tokenizer, spec.seed)
    pretrain = dataclasses.replace(spec.llm_pretrain, steps=args.steps)
    start = time.perf_counter()
    final = lp.pretrain_llm(llm, tokenizer, pretrain, spec.seed, spec.vision.grid)
    print(f"final held-out {final} after {args.steps} steps, {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
