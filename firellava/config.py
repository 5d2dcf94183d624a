"""The one bridge from Hydra config to code: every config group names its frozen spec with `_target_`, and
`build` turns a group (nested specs included) into that spec. Code below a stage entry takes typed arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def build(node: Any, **overrides: Any) -> Any:
    """The spec a config node names with `_target_`, with its nested specs built and containers made plain."""
    return instantiate(node, _convert_="all", **overrides)
