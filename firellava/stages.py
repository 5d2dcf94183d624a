"""The stages `python -m firellava` knows, in pipeline order, and the run of a list of them.

Each stage maps to `module:function(cfg) -> dict`, the stage entry that turns its config subtree into typed
arguments and returns its summary entry, and to the config subtrees it reads (`READS`). A stage whose entry in
summary.json was made from the same subtrees is done: a rerun skips it, so a run that failed continues from the
failed stage. Once one stage runs, every later one runs too (its inputs may have changed). `resume=false` runs
every listed stage (each then applies its own rule to existing outputs: resume, refuse or overwrite).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from firellava.config import build
from firellava.core.tracking import WandbSpec, stage_run
from firellava.paths import Paths
from firellava.summary import WALL_S, record_stage

log = logging.getLogger("firellava")

STAGES: dict[str, str] = {
    "toy_world": "firellava.toy.stage:run",
    "datagen": "firellava.datagen.stage:run",
    "mix": "firellava.mix.stage:run",
    "pretrain": "firellava.train.launch:run_pretrain",
    "finetune": "firellava.train.launch:run_finetune",
    "eval": "firellava.eval.stage:run",
    "serve": "firellava.serve.stage:run",
}

# What each stage's outputs depend on, besides the stages before it.
READS: dict[str, tuple[str, ...]] = {
    "toy_world": ("toy_world", "paths"),
    "datagen": ("data_gen", "teacher", "engine.teacher", "paths"),
    "mix": ("mix", "paths"),
    "pretrain": ("train", "model", "deepspeed", "paths"),
    "finetune": ("train", "model", "deepspeed", "paths"),
    "eval": ("eval", "engine.eval", "engine.judge", "paths"),
    "serve": ("serve", "engine.serve", "paths"),
}
CONFIG_DIGEST = "config_digest"
FINISHED_AT = "finished_at"


def resolve(name: str) -> Callable[[Any], dict[str, Any]]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def config_digest(cfg: DictConfig, stage: str) -> str:
    """sha256 over the resolved config subtrees the stage reads."""
    parts = {key: OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True) for key in READS[stage]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(summary: dict[str, Any], stage: str, digest: str) -> bool:
    entry = summary.get(stage)
    if not isinstance(entry, dict) or entry.get(CONFIG_DIGEST) != digest:
        return False
    return "dir" not in entry or Path(entry["dir"]).exists()


def run_stages(cfg: DictConfig) -> dict[str, Any]:
    """Run cfg.stages in order, each recorded in summary.json/.md with its wall time as it finishes. A failing
    stage raises (the caller exits non-zero) and leaves earlier stages' outputs and entries as they are."""
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:  # fail before any work, not halfway through
        raise SystemExit(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    if not stages:
        log.warning("experiment %s lists no stages; nothing to run", cfg.name)
    paths: Paths = build(cfg.paths)
    tracking: WandbSpec = build(cfg.wandb).for_run(cfg.name)
    cfg.wandb.group = tracking.group  # the training workers rebuild it from cfg: the same group
    log.info("experiment %s: stages %s -> %s", cfg.name, stages, paths.output_dir)
    summary = json.loads(Path(paths.summary).read_text()) if Path(paths.summary).exists() else {}
    running = not cfg.get("resume", True)
    for name in stages:
        digest = config_digest(cfg, name)
        if not running and _done(summary, name, digest):
            log.info(
                "stage %s: done at %s with this config (%s); skipped (resume=false reruns it)",
                name,
                summary[name].get(FINISHED_AT),
                paths.summary,
            )
            continue
        running = True
        start = time.perf_counter()
        config = {
            key: OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True) for key in READS[name]
        }
        try:
            with stage_run(tracking, name, config) as tracked:
                entry = dict(resolve(name)(cfg))
                entry[WALL_S] = round(time.perf_counter() - start, 1)
                tracked.update(entry)
        except BaseException:
            log.error(
                "stage %s failed after %.1fs; the outputs of the stages before it are kept and rerunning the "
                "same command continues from %s",
                name,
                time.perf_counter() - start,
                name,
            )
            raise
        entry[FINISHED_AT] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry[CONFIG_DIGEST] = digest
        summary = record_stage(paths.summary, name, entry)
        log.info("stage %s done in %.1fs: %s", name, entry[WALL_S], json.dumps(entry))
    return summary
