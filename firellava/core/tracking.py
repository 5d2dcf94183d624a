"""Experiment tracking (the `wandb` config group): every stage of one pipeline run logs to one wandb project and
group, one wandb run per stage (named after the stage), plus the HF Trainer's own run inside the training
workers (`<stage>-trainer`, same group).

The pipeline opens a stage's run before the stage starts and closes it with the stage's summary entry; stage code
only logs to the active run (`active_run()`), so a stage called on its own (tests, notebooks) logs nothing. The
training workers are other processes: they get the run's settings as WANDB_* environment variables (`env`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSpec:
    mode: str = "disabled"
    project: str = "firellava"
    entity: str | None = None
    group: str | None = None  # None: <experiment name>-<UTC start time>, one group per pipeline run
    dir: str | None = None  # wandb writes its `wandb/` folder here (offline runs: wandb/offline-run-*)
    samples: int = 8  # rows per type in sample tables

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"wandb.mode must be one of {MODES}, got {self.mode!r}")

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def for_run(self, name: str) -> WandbSpec:
        """This spec with its group fixed for one pipeline run (stages and workers share it)."""
        if self.group:
            return self
        return replace(self, group=f"{name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}")

    def env(self, run_name: str) -> dict[str, str]:
        """WANDB_* variables for a process that starts its own run (the HF Trainer in a training worker)."""
        env = {"WANDB_MODE": self.mode, "WANDB_PROJECT": self.project, "WANDB_NAME": run_name}
        for key, value in (
            ("WANDB_RUN_GROUP", self.group),
            ("WANDB_ENTITY", self.entity),
            ("WANDB_DIR", self.dir),
        ):
            if value:
                env[key] = str(value)
        return env


def flat_numbers(entry: Mapping[str, Any], prefix: str = "") -> dict[str, float | int]:
    """The numeric leaves of a nested summary entry, keyed `a/b/c` (wandb's panel grouping)."""
    out: dict[str, float | int] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def active_run() -> Any | None:
    """The stage's wandb run when the pipeline opened one, else None (wandb is imported only if it is)."""
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


@contextmanager
def stage_run(spec: WandbSpec, stage: str, config: Mapping[str, Any] | None = None) -> Iterator[Any | None]:
    """One wandb run for one stage; yields a dict the caller fills with the stage's summary entry, whose numbers
    become the run's summary. Disabled mode: no wandb import, no files."""
    entry: dict[str, Any] = {}
    if not spec.enabled:
        yield entry
        return
    import wandb

    if spec.dir:
        os.makedirs(spec.dir, exist_ok=True)
    run = wandb.init(
        project=spec.project,
        entity=spec.entity,
        group=spec.group,
        name=stage,
        job_type=stage,
        dir=spec.dir,
        mode=spec.mode,
        config=dict(config or {}),
        reinit="finish_previous",
    )
    try:
        yield entry
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.summary.update(flat_numbers(entry))
    run.finish()
