"""The stages `python -m firellava` knows, in pipeline order. Each maps to `module:function(cfg) -> dict`, the
stage entry that turns its config subtree into typed arguments and returns its summary entry."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

STAGES: dict[str, str] = {
    "toy_world": "firellava.toy.stage:run",
    "datagen": "firellava.datagen.stage:run",
    "mix": "firellava.mix.stage:run",
    "pretrain": "firellava.train.launch:run_pretrain",
    "finetune": "firellava.train.launch:run_finetune",
    "eval": "firellava.eval.stage:run",
    "serve": "firellava.serve.stage:run",
}


def resolve(name: str) -> Callable[[Any], dict[str, Any]]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)
