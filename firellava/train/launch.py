"""The pipeline stages `pretrain` and `finetune`: start the `deepspeed` launcher on `train.worker`.

The composed config is saved (resolved) next to the stage's outputs and handed to every worker process with
Hydra's `--config-path/--config-name`, so the workers see exactly the config this process saw. Devices, nodes
and the hostfile come from `train.num_gpus`, `train.num_nodes`, `train.hostfile`; without CUDA the launcher
runs `train.num_gpus` CPU processes.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from firellava.core.io import atomic_path, read_json
from firellava.core.net import free_port
from firellava.train.config import stage_spec
from firellava.train.export import RESULT_FILE

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = (
    "dir",
    "steps",
    "final_loss",
    "samples_per_s",
    "first_loss",
    "train_seconds",
    "batch",
    "data",
    "resumed_from",
    "start_step",
)


def launcher_command(cfg: DictConfig, config_dir: Path, port: int) -> list[str]:
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed) if deepspeed.exists() else "deepspeed"]
    if cfg.train.hostfile:
        cmd += ["--hostfile", str(cfg.train.hostfile)]
    cmd += [
        "--num_nodes",
        str(cfg.train.num_nodes),
        "--num_gpus",
        str(cfg.train.num_gpus),
        "--master_port",
        str(port),
        "--module",
        "firellava.train.worker",
        f"--config-path={config_dir}",
        "--config-name=config",
        # The stage directory holds the logs that matter; Hydra writes nothing of its own per worker.
        "hydra.run.dir=.",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]
    return cmd


def launch(cfg: DictConfig, stage: str) -> dict[str, Any]:
    spec = stage_spec(cfg, stage)  # a bad config fails here, before any process starts
    out = Path(spec.output_dir).resolve()
    if (out / RESULT_FILE).exists():
        if not cfg.train.overwrite:
            raise FileExistsError(
                f"{out} holds a finished {stage} run ({RESULT_FILE}); pass train.overwrite=true to redo it"
            )
        shutil.rmtree(out)
    config_dir = out / ".launch"
    config_dir.mkdir(parents=True, exist_ok=True)
    worker_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.update(worker_cfg, "train.stage", stage)
    OmegaConf.update(worker_cfg, "train.overwrite", False)  # the directory was cleared above
    with atomic_path(config_dir / "config.yaml") as tmp:
        OmegaConf.save(worker_cfg, tmp)
    port = int(cfg.train.master_port) if cfg.train.master_port else free_port()
    cmd = launcher_command(cfg, config_dir, port)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if not torch.cuda.is_available():
        procs = max(1, int(cfg.train.num_gpus))
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
    log.info("%s: %s", stage, " ".join(cmd))
    rc = subprocess.run(cmd, env=env, cwd=os.getcwd(), check=False).returncode
    if rc != 0 or not (out / RESULT_FILE).exists():
        raise RuntimeError(
            f"{stage}: the deepspeed launcher exited with status {rc}; see the worker log above"
        )
    result = read_json(out / RESULT_FILE)
    return {k: result[k] for k in SUMMARY_KEYS if k in result}


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    return launch(cfg, "pretrain")


def run_finetune(cfg: DictConfig) -> dict[str, Any]:
    return launch(cfg, "finetune")
