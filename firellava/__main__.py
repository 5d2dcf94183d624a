"""`python -m firellava [overrides]`: run the configured stages in order and record each in summary.json and
summary.md (firellava/stages.py)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from firellava.config import CONF_DIR
from firellava.core.allocator import restart_with_tuned_malloc
from firellava.stages import run_stages


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_stages(cfg)


if __name__ == "__main__":
    restart_with_tuned_malloc()
    sys.exit(main())
