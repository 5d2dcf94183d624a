"""The per-process training entry the `deepspeed` launcher starts: `python -m train.worker [hydra overrides]`.

    deepspeed --num_gpus 8 --module train.worker experiment=firellava_13b train.stage=finetune

The launcher appends `--local_rank=N`; it is consumed here (into LOCAL_RANK) so that Hydra sees only overrides.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from firellava.config import CONF_DIR
from firellava.train.config import deepspeed_config, model_spec, stage_spec
from firellava.train.stage import train_stage


def consume_local_rank(argv: list[str]) -> list[str]:
    """Drop `--local_rank=N` / `--local_rank N` (and the `--local-rank` spelling), exporting LOCAL_RANK."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, _, value = arg.partition("=")
        if name in ("--local_rank", "--local-rank"):
            if not value and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            os.environ.setdefault("LOCAL_RANK", value)
        else:
            out.append(arg)
        i += 1
    return out


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.getLogger().setLevel(logging.INFO if rank == 0 else logging.WARNING)
    stage = cfg.train.stage
    spec = stage_spec(cfg, stage)
    train_stage(
        stage,
        spec,
        model_spec(cfg),
        deepspeed_config(cfg, spec.zero_stage),
        overwrite=bool(cfg.train.overwrite),
    )


if __name__ == "__main__":
    sys.argv = consume_local_rank(sys.argv)
    main()
