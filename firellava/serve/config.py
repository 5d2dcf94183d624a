"""The `serve` config subtree -> typed `ServerSettings` (the only place that sees a DictConfig)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from firellava.serve.settings import ServerSettings


def settings_from_cfg(serve_cfg: Any, **overrides: Any) -> ServerSettings:
    d = OmegaConf.to_container(serve_cfg, resolve=True) if OmegaConf.is_config(serve_cfg) else dict(serve_cfg)
    d.pop("demo", None)  # the demo stage's own request, not a server setting
    d.update(overrides)
    return ServerSettings.from_dict(d)
