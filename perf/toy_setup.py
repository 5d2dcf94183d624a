"""What the toy-world performance scripts share: the demo's toy world spec and a tokenizer trained on its data,
as the toy world stage trains it."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.config import CONF_DIR, build  # noqa: E402
from firellava.toy.data import build_toy_data  # noqa: E402
from firellava.toy.scenes import COLOURS, SHAPES  # noqa: E402
from firellava.toy.stage import ToyWorldSpec, corpus  # noqa: E402
from firellava.toy.tiny_models import train_tokenizer  # noqa: E402


def demo_toy_world(*overrides: str) -> ToyWorldSpec:
    """`experiment=demo`'s toy world spec, with Hydra overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=demo", *overrides])
    return build(cfg.toy_world)


def world_tokenizer(spec: ToyWorldSpec):
    """The toy tokenizer trained on the data `spec` writes (in a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = build_toy_data(
            Path(tmp),
            seed=spec.seed,
            coco_images=spec.coco_images,
            pretrain_images=spec.pretrain_images,
            per_source=dict(spec.per_source),
        )
        return train_tokenizer(corpus(data), spec.vocab_size, words=[*COLOURS, *SHAPES])


def pretraining_examples(spec: ToyWorldSpec, tokenizer, n: int) -> list:
    """`n` of the toy LLM's text-pretraining examples for `spec`, drawn with seed 0."""
    from firellava.toy.llm_pretrain import LlmPretrainSpec, _examples

    example_spec = LlmPretrainSpec(steps=1, batch_size=n, plain_fraction=spec.llm_pretrain.plain_fraction)
    return _examples(example_spec, tokenizer, 0, spec.vision.grid)
