"""`python -m firellava [overrides]`: run the configured stages in order and record each in summary.json and
summary.md (firellava/stages.py)."""

from __future__ import annotations

import signal
import sys

import hydra
from omegaconf import DictConfig

from firellava.config import CONF_DIR
from firellava.core.allocator import restart_with_tuned_malloc
from firellava.stages import run_stages


def exit_on_sigterm() -> None:
    """End the run on SIGTERM (`kill`, a scheduler's stop) as on Ctrl-C, by an exception: the running stage's
    cleanup then runs (a training stage stops its DeepSpeed launcher and workers, the toy world its helper
    processes) instead of this process vanishing and leaving its children at work."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on_sigterm()
    run_stages(cfg)


if __name__ == "__main__":
    restart_with_tuned_malloc()
    sys.exit(main())
