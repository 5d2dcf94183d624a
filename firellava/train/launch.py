"""The pipeline stages `pretrain` and `finetune`: start the `deepspeed` launcher on
`firellava.train.worker`.

The stage's job (its StageSpec, the model, its DeepSpeed config) is written as a config node
(`firellava.config.to_node`) next to the stage's outputs; every worker process builds it again, so the workers run
exactly what this process built. Devices, nodes and the hostfile come from `train.num_gpus`, `train.num_nodes`,
`train.hostfile`; without CUDA the launcher runs `train.num_gpus` CPU processes. The stage's summary entry is the
worker's whole result (`train_result.json`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from firellava.config import build, to_node
from firellava.core.io import atomic_path, read_json
from firellava.core.model_builder import ModelSpec
from firellava.core.model_card import card_data
from firellava.core.net import free_port
from firellava.core.tracking import WandbSpec
from firellava.train.export import RESULT_FILE
from firellava.train.spec import DeepSpeedSpec, StageSpec, TrainSpec, WorkerJob
from firellava.train.terms import check_terms

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
SHM_DIR = Path("/dev/shm")
STOP_GRACE_S = 30.0  # for the launcher to end its workers when this process is stopped


def remove_shm_buffers(port: int, shm_dir: Path = SHM_DIR) -> None:
    """Remove the shared-memory allreduce buffers of the CPU run on `port`: DeepSpeed's CPU collectives create
    one per rank (`deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`, tens of MB) and never unlink them,
    so every CPU run would leave its buffers in /dev/shm until the machine runs out of shared memory."""
    for path in shm_dir.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"):
        path.unlink(missing_ok=True)


def launcher_command(train: TrainSpec, job_file: Path, port: int) -> list[str]:
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed) if deepspeed.exists() else "deepspeed"]
    if train.hostfile:
        cmd += ["--hostfile", str(train.hostfile)]
    cmd += [
        "--num_nodes",
        str(train.num_nodes),
        "--num_gpus",
        str(train.num_gpus),
        "--master_port",
        str(port),
        "--module",
        "firellava.train.worker",
        str(job_file),
    ]
    return cmd


def run_launcher(cmd: list[str], env: dict[str, str], grace_s: float = STOP_GRACE_S) -> int:
    """Run the deepspeed launcher to its end and return its exit status.

    It runs in a process group of its own, with its workers. If this process is stopped first (an exception:
    Ctrl-C, or SIGTERM through the entry's handler), the whole group gets SIGTERM and `grace_s` to end before it
    is killed: on one node the launcher passes no signal on to its workers, so stopping it alone would leave them
    training, and their shared-memory buffers behind."""
    process = subprocess.Popen(cmd, env=env, cwd=os.getcwd(), start_new_session=True)
    try:
        return process.wait()
    except BaseException:
        stop_group(process, grace_s)
        raise


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to `process`'s group (it leads one: `start_new_session`), then SIGKILL to what is left of it after
    `grace_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reaps the leader, which would otherwise keep the group alive as a zombie
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def launch(
    train: TrainSpec,
    model: ModelSpec,
    deepspeed: DeepSpeedSpec,
    stage: str,
    tracking: WandbSpec | None = None,
) -> dict[str, Any]:
    tracking = tracking or WandbSpec()
    spec = with_tracking(train.stage(stage), tracking)
    ds_config = deepspeed.config(spec.zero_stage)  # a bad config fails here, before any process starts
    out = Path(spec.output_dir).resolve()
    if (out / RESULT_FILE).exists():
        if not train.overwrite:
            raise FileExistsError(
                f"{out} holds a finished {stage} run ({RESULT_FILE}); pass train.overwrite=true to redo it"
            )
        shutil.rmtree(out)
    job_dir = out / ".launch"
    job_dir.mkdir(parents=True, exist_ok=True)
    card = None
    if stage == "finetune":  # a refused model fails here, before any process starts
        manifest, terms = check_terms(spec.data_json, model, train.allow_terms_override)
        card = card_data(dataclasses.asdict(model), manifest, terms)
    # overwrite=False for the workers: the directory was cleared above
    job = WorkerJob(stage=stage, spec=spec, model=model, deepspeed=ds_config, overwrite=False, card=card)
    with atomic_path(job_dir / "job.json") as tmp:
        tmp.write_text(json.dumps(to_node(job), indent=1), encoding="utf-8")
    port = train.master_port or free_port()
    cmd = launcher_command(train, job_dir / "job.json", port)
    env = dict(os.environ)
    if tracking.enabled:
        env.update(tracking.env(f"{stage}-trainer"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if not torch.cuda.is_available():
        procs = max(1, train.num_gpus)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
        # DeepSpeed compiles its CPU shared-memory collectives the first time a training starts. scripts/install.sh
        # builds them into this environment's own extension cache, so no training waits for the compiler, and two
        # environments (or clones) do not rebuild over each other's.
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    log.info("%s: %s", stage, " ".join(cmd))
    try:
        rc = run_launcher(cmd, env)
    finally:
        remove_shm_buffers(port)
    if rc != 0 or not (out / RESULT_FILE).exists():
        raise RuntimeError(
            f"{stage}: the deepspeed launcher exited with status {rc}; see the worker log above"
        )
    return read_json(out / RESULT_FILE)


def with_tracking(spec: StageSpec, tracking: WandbSpec) -> StageSpec:
    """The HF Trainer reports to wandb exactly when the pipeline tracks (conf/wandb), whatever report_to says."""
    others = [r for r in spec.report_to if r != "wandb"]
    return dataclasses.replace(spec, report_to=others + (["wandb"] if tracking.enabled else []))


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    return launch(build(cfg.train), build(cfg.model), build(cfg.deepspeed), "pretrain", build(cfg.wandb))


def run_finetune(cfg: DictConfig) -> dict[str, Any]:
    return launch(build(cfg.train), build(cfg.model), build(cfg.deepspeed), "finetune", build(cfg.wandb))
