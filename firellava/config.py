"""The one bridge from Hydra config to code: every config group names its frozen spec with `_target_`, and
`build` turns a group (nested specs included) into that spec. Code below a stage entry takes typed arguments.

`to_node` is the same bridge in reverse, for a spec that crosses a process boundary (the server's settings, a
training worker's job): written as JSON, built again with `build` on the other side.

Resolvers the config files use (registered on import, before any config is resolved):
  ${basename:PATH}   the last component of a path or hub id: the name a checkpoint is served and cached under
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def basename(path: str) -> str:
    return Path(os.path.abspath(path)).name


OmegaConf.register_new_resolver("basename", basename, replace=True)


def build(node: Any, **overrides: Any) -> Any:
    """The spec a config node names with `_target_`, with its nested specs built and containers made plain."""
    return instantiate(node, _convert_="all", **overrides)


def to_node(value: Any) -> Any:
    """The plain config node that `build` turns back into `value`: a dataclass as its `_target_` and fields
    (recursively), tuples as lists, paths as strings. `${` in a string is escaped so that it stays text: twice,
    because hydra resolves a node before it instantiates it and again as it reads each value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        node = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
        node.update({f.name: to_node(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init})
        return node
    if isinstance(value, Mapping):
        return {str(k): to_node(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_node(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return value.replace("${", "\\\\\\${")
    return value
