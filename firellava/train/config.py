"""The config subtree of a training stage as typed arguments (shared by the launcher and the worker)."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from firellava.core.model_builder import ModelSpec
from firellava.train.spec import STAGE_NAMES, StageSpec


def stage_spec(cfg: DictConfig, stage: str) -> StageSpec:
    if stage not in STAGE_NAMES:
        raise ValueError(f"train.stage={stage!r}; choose one of {list(STAGE_NAMES)}")
    values = OmegaConf.to_container(cfg.train[stage], resolve=True)
    return StageSpec(**values)  # type: ignore[arg-type]


def model_spec(cfg: DictConfig) -> ModelSpec:
    return instantiate(cfg.model, _convert_="all")


def deepspeed_config(cfg: DictConfig, zero_stage: int) -> dict[str, Any]:
    key = f"zero{zero_stage}"
    if key not in cfg.deepspeed:
        raise KeyError(f"deepspeed.{key} is not configured (conf/deepspeed/); have {list(cfg.deepspeed)}")
    return OmegaConf.to_container(cfg.deepspeed[key], resolve=True)  # type: ignore[return-value]
