"""`python -m firellava [overrides]`: run the configured stages in order and record each in summary.json."""

from __future__ import annotations

import json
import logging
import sys
import time

import hydra
from omegaconf import DictConfig

from firellava.config import CONF_DIR, build
from firellava.paths import Paths
from firellava.stages import STAGES, resolve
from firellava.summary import record_stage

log = logging.getLogger("firellava")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:  # fail before any work, not halfway through
        raise SystemExit(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    if not stages:
        log.warning("experiment %s lists no stages; nothing to run", cfg.name)
    paths: Paths = build(cfg.paths)
    log.info("experiment %s: stages %s -> %s", cfg.name, stages, paths.output_dir)
    for name in stages:
        start = time.perf_counter()
        entry = resolve(name)(cfg)
        record_stage(paths.summary, name, entry)
        log.info("stage %s done in %.1fs: %s", name, time.perf_counter() - start, json.dumps(entry))


if __name__ == "__main__":
    sys.exit(main())
