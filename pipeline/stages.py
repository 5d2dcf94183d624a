"""The stages `python -m pipeline` knows, in pipeline order. Each maps to `module:function(cfg) -> dict`, the
stage entry that turns its config subtree into typed arguments and returns its summary entry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

STAGES: dict[str, str] = {
    "toy_world": "pipeline.toy_world.build:run",
    "datagen": "data_gen.stage:run",
    "mix": "data_gen.mix:run",
    "pretrain": "train.launch:run_pretrain",
    "finetune": "train.launch:run_finetune",
    "eval": "eval.stage:run",
    "serve": "serve.stage:run",
}


def resolve(name: str) -> Callable[[Any], dict[str, Any]]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)
