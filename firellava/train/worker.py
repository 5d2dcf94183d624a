"""The per-process training entry the `deepspeed` launcher starts: `python -m firellava.train.worker JOB.json`.

    deepspeed --num_gpus 8 --module firellava.train.worker outputs/firellava_13b/finetune/.launch/job.json

JOB.json is the stage's `WorkerJob` as a config node, written by `firellava.train.launch` (make pretrain /
make finetune). The launcher appends `--local_rank=N`; it is consumed here (into LOCAL_RANK).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

from firellava.config import build
from firellava.train.spec import WorkerJob
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


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(
            "usage: python -m firellava.train.worker JOB.json (written by firellava.train.launch)"
        )
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
        stream=sys.stdout,
    )
    job: WorkerJob = build(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    train_stage(job.stage, job.spec, job.model, job.deepspeed, overwrite=job.overwrite, card=job.card)
    leave()


def leave() -> None:
    """End a finished worker without the interpreter's teardown.

    A finished ZeRO-3 worker, its outputs complete and its process group destroyed, was seen to abort in that
    teardown ("terminate called without an active exception": a C++ thread still joinable when static objects
    are destroyed), and the launcher then failed the whole run. So what the teardown would flush is flushed
    here, and the process leaves at once with status 0.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    wandb = sys.modules.get("wandb")  # the HF Trainer's run; wandb closes it only at interpreter exit
    if wandb is not None and wandb.run is not None:
        wandb.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(consume_local_rank(sys.argv)[1:])
