"""Both stages for real: 2 CPU processes through the `deepspeed` launcher (ZeRO-2, then ZeRO-3), on the small
session toy world. After each stage exactly the intended parameters changed; the finetuned directory loads with
plain transformers and generates; a finished stage is not silently redone; a stopped run leaves no process
behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from transformers import AutoProcessor, CLIPVisionModel, LlamaForCausalLM

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine
from firellava.train.export import PROJECTOR_FILE, RESULT_FILE, TRAINER_STATE
from firellava.train.launch import run_finetune, run_pretrain
from tests.llava_helpers import load_llava, render
from tests.wandb_helpers import offline_runs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHM = Path("/dev/shm")
STARTED = time.time()


def tiny_overrides(world: dict, out: Path, *extra: str) -> list[str]:
    root = Path(world["dir"])
    return [
        "experiment=demo",
        f"paths.output_dir={out}",
        f"paths.data_root={root}/data",
        f"paths.pretrain_json={world['pretrain_json']}",
        f"paths.pretrain_images={world['pretrain_image_dir']}",
        f"paths.toy_models={root}/models",
        "train.finetune.data_json=${paths.mix665k_json}",  # the mix stage's output has this same format
        "train.pretrain.global_batch_size=4",
        "train.pretrain.per_device_batch_size=2",
        "train.pretrain.epochs=1",
        "train.finetune.global_batch_size=8",
        "train.finetune.per_device_batch_size=2",  # accumulation 2
        "train.finetune.packing=true",  # production's default (the CPU demo's rows are padding-free unpacked)
        "train.finetune.padding_free=false",
        "train.finetune.pack_images=2",  # about 2 samples a pack, 1 pack a micro-batch
        "train.finetune.epochs=1",
        *extra,
    ]


def tiny_cfg(world: dict, out: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=tiny_overrides(world, out, *extra))


# Both stages keep a checkpoint of each of their last two steps: the resume tests restart from them.
CHECKPOINTS = tuple(
    f"train.{stage}.{key}={value}"
    for stage in ("pretrain", "finetune")
    for key, value in (("save_steps", 1), ("save_total_limit", 2))
)


@pytest.fixture(scope="module")
def stages(toy_world, tmp_path_factory):
    # wandb offline: the HF Trainer in the rank-0 worker writes its run under paths.output_dir/wandb/.
    tracking = ("wandb.mode=offline", "wandb.group=train-test")
    cfg = tiny_cfg(toy_world, tmp_path_factory.mktemp("train"), *CHECKPOINTS, *tracking)
    return cfg, run_pretrain(cfg), run_finetune(cfg)


def test_trainer_logs_curves_to_wandb_and_trainer_state(stages):
    cfg, pre, fine = stages
    runs = offline_runs(cfg.paths.output_dir)
    assert set(runs) == {"pretrain-trainer", "finetune-trainer"}
    for result, run in ((pre, runs["pretrain-trainer"]), (fine, runs["finetune-trainer"])):
        assert run["group"] == "train-test" and run["project"] == cfg.wandb.project
        losses = [row["train/loss"] for row in run["history"] if "train/loss" in row]
        assert len(losses) == result["steps"] and losses[-1] == pytest.approx(result["final_loss"], abs=1e-3)
        state = json.loads((Path(result["dir"]) / TRAINER_STATE).read_text())
        assert [e["loss"] for e in state["log_history"] if "loss" in e] == pytest.approx(losses, abs=1e-6)


def shm_buffers(since: float, port: int | str = "*") -> list[str]:
    """DeepSpeed's CPU allreduce buffers of this user (and the run on `port`) created since `since`."""
    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*"
    return [p.name for p in SHM.glob(pattern) if p.stat().st_mtime >= since]


def test_cpu_runs_leave_no_shared_memory_behind(stages):
    """DeepSpeed's CPU collectives never unlink their per-rank /dev/shm buffers; the launcher removes them."""
    if not SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    assert shm_buffers(STARTED) == []


def _launched(root: psutil.Process) -> tuple[list[psutil.Process], int | None]:
    """The training workers under `root` and the launcher's master port."""
    workers, port = [], None
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            # the launcher's own command names the module too, after --module
            if "firellava.train.worker" in cmd and cmd[cmd.index("firellava.train.worker") - 1] == "-m":
                workers.append(child)
            if "--master_port" in cmd:
                port = int(cmd[cmd.index("--master_port") + 1])
    return workers, port


def test_a_stopped_run_stops_the_launcher_and_its_workers(toy_world, tmp_path):
    """SIGTERM to `python -m firellava` (`kill`, a scheduler's stop) during a training stage: the run exits with
    128 + SIGTERM, and no DeepSpeed launcher, worker or shared-memory buffer is left behind."""
    if not SHM.is_dir():
        pytest.skip("no /dev/shm on this machine")
    started = time.time()
    overrides = tiny_overrides(toy_world, tmp_path, "stages=[pretrain]", "train.pretrain.epochs=10000")
    run = subprocess.Popen(
        [sys.executable, "-m", "firellava", *overrides],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        main = psutil.Process(run.pid)
        deadline = time.time() + 180
        # Training has begun once both workers run and their collectives made their buffers.
        while True:
            workers, port = _launched(main)
            if len(workers) == 2 and port is not None and len(shm_buffers(started, port)) == 2:
                break
            assert run.poll() is None and time.time() < deadline, "the training stage did not start"
            time.sleep(0.5)
        tree = main.children(recursive=True)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:  # the test failed: leave nothing running
            for process in [*main.children(recursive=True), main]:
                with contextlib.suppress(psutil.Error):
                    process.kill()
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert alive == [], [p.pid for p in alive]
    assert shm_buffers(started, port) == []


def test_pretrain_zero2_trains_only_the_projector(stages, toy_world):
    cfg, pre, _ = stages
    out = Path(pre["dir"])
    assert out == Path(cfg.paths.pretrain_dir).resolve()
    assert {"dir", "steps", "final_loss", "samples_per_s"} <= set(pre)
    assert pre["steps"] == 3 and pre["batch"]["world_size"] == 2  # 12 records / global batch 4
    result = json.loads((out / RESULT_FILE).read_text())
    assert result["zero_stage"] == 2
    # The demo's padding-free rows: sdpa per sample in the language model.
    assert result["runtime"]["attn_implementation"] == "sdpa_varlen"
    changed = result["changed_tensors"]
    assert changed["projector"] == [4, 4]
    assert changed["llm"][0] == 0 and changed["vision_tower"][0] == 0
    assert changed["llm"][1] > 0 and changed["vision_tower"][1] > 0
    projector = load_file(str(out / PROJECTOR_FILE))
    assert set(projector) == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    assert (out / "config.json").is_file()


def test_finetune_zero3_trains_llm_and_projector_vision_bit_identical(stages, toy_world):
    cfg, pre, fine = stages
    out = Path(fine["dir"])
    result = json.loads((out / RESULT_FILE).read_text())
    assert result["zero_stage"] == 3 and result["batch"]["accumulation"] == 2
    assert result["runtime"]["attn_implementation"] == "sdpa_varlen"  # packed rows, no flash-attn on CPU
    packing = result["packing"]  # on by default for finetuning
    assert packing["samples"] == result["data"]["kept"] and 1.5 < packing["samples_per_pack"] <= 3
    # 2 ranks x accumulation 2 packs a step; the packs were split to whole steps
    assert packing["packs_per_device"] == 1 and packing["packs"] % 4 == 0
    assert fine["steps"] == packing["packs"] // 4
    assert 0 < packing["real_token_fraction"] <= 1 and 0 < packing["pack_fill"] <= 1
    assert pre["packing"] is None
    changed = result["changed_tensors"]
    assert changed["vision_tower"][0] == 0
    assert changed["projector"] == [4, 4] and changed["llm"][0] == changed["llm"][1]

    model, _ = load_llava(out)
    vision = CLIPVisionModel.from_pretrained(toy_world["models"]["vision_tower"])
    for name, tensor in vision.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], tensor), name
    pretrained = load_file(str(Path(pre["dir"]) / PROJECTOR_FILE))
    mine = model.model.multi_modal_projector.state_dict()
    assert all(not torch.equal(mine[k], v) for k, v in pretrained.items())
    base = LlamaForCausalLM.from_pretrained(toy_world["models"]["llm"])
    assert not torch.equal(model.lm_head.weight[: base.lm_head.weight.shape[0]], base.lm_head.weight)
    layer = "layers.0.mlp.down_proj.weight"
    assert not torch.equal(model.model.language_model.state_dict()[layer], base.model.state_dict()[layer])


def test_export_round_trip_loads_and_generates(stages):
    _, _, fine = stages
    out = Path(fine["dir"])
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.do_pad  # finetune data was padded to square; inference must match
    messages = [{"role": "user", "content": "<image>\nWhat color is the circle?"}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == render(
        messages, add_generation_prompt=True
    )
    from PIL import Image

    engine = build_engine(EngineSpec("transformers"), str(out))
    prompt = Prompt(messages=messages, images=[Image.new("RGB", (50, 70), (220, 30, 30))])
    [gen] = engine.generate([prompt], SamplingParams(max_tokens=4))
    assert gen.prompt_tokens > 36  # the processor expanded <image> to the model's 36 image tokens
    assert gen.completion_tokens <= 4 and gen.finish_reason in ("stop", "length")
    # The model card ships with the weights; this data (the 665K-format file) came without a mix manifest.
    card = (out / "README.md").read_text()
    assert "came without a mix manifest" in card and "`toy-llama`" in card and "Not evaluated yet" in card
    assert json.loads((out / "model_card.json").read_text())["training"]["steps"] == fine["steps"]


def test_finished_stage_is_refused_not_redone(stages):
    cfg, _, _ = stages
    with pytest.raises(FileExistsError, match="train.overwrite=true"):
        run_pretrain(cfg)


def _interrupt_while_saving(done: Path, out: Path) -> tuple[Path, int]:
    """What a run killed while saving its last checkpoint leaves in `out`: the checkpoint before it complete, the
    last one without trainer_state.json (HF writes it last), and none of the stage's exported files."""
    shutil.copytree(done / "checkpoints", out / "checkpoints")
    steps = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert len(steps) == 2 and steps[1] == steps[0] + 1
    (out / "checkpoints" / f"checkpoint-{steps[1]}" / "trainer_state.json").unlink()
    return out / "checkpoints" / f"checkpoint-{steps[0]}", steps[0]


def test_interrupted_zero2_stage_resumes_and_gradient_checkpointing_changes_nothing(
    stages, toy_world, tmp_path
):
    _, pre, _ = stages
    assert pre["resumed_from"] is None and pre["start_step"] == 0
    done = Path(pre["dir"])
    # The resumed run recomputes activations in the backward pass (the GPU setting): in fp32 the gradients,
    # and so the weights, must come out as the uninterrupted run's without it.
    cfg = tiny_cfg(toy_world, tmp_path, *CHECKPOINTS, "train.pretrain.gradient_checkpointing=true")
    out = Path(cfg.paths.pretrain_dir).resolve()
    last_complete, step = _interrupt_while_saving(done, out)

    again = run_pretrain(cfg)  # not refused: without its result marker the stage is unfinished
    assert again["resumed_from"] == str(last_complete) and again["start_step"] == step == 2
    assert again["steps"] == pre["steps"] == 3
    runtime = [json.loads((d / RESULT_FILE).read_text())["runtime"] for d in (done, out)]
    assert [r["gradient_checkpointing"] for r in runtime] == [False, True]
    # Optimizer moments, LR schedule, data order and RNG came back with the checkpoint: the finished
    # projector is the one of the run that was never interrupted (a fresh Adam at step 3 would move it ~lr).
    resumed, original = load_file(str(out / PROJECTOR_FILE)), load_file(str(done / PROJECTOR_FILE))
    assert set(resumed) == set(original)
    for name, tensor in original.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_interrupted_packed_zero3_stage_resumes_and_gradient_checkpointing_changes_nothing(
    stages, toy_world, tmp_path
):
    _, pre, fine = stages
    assert fine["resumed_from"] is None and fine["start_step"] == 0
    done = Path(fine["dir"])
    # The resumed run recomputes activations in the backward pass (the GPU setting): in fp32 the gradients,
    # and so the weights, must come out as the uninterrupted run's without it.
    cfg = tiny_cfg(toy_world, tmp_path, *CHECKPOINTS, "train.finetune.gradient_checkpointing=true")
    shutil.copytree(pre["dir"], cfg.paths.pretrain_dir)  # the finished projector the finetune starts from
    out = Path(cfg.paths.finetune_dir).resolve()
    last_complete, step = _interrupt_while_saving(done, out)

    again = run_finetune(cfg)
    assert again["resumed_from"] == str(last_complete) and again["start_step"] == step == fine["steps"] - 1
    assert again["packing"] == fine["packing"]  # the same packs, which the resumed sampler skips exactly
    assert again["steps"] == fine["steps"]
    # The step after the resume trained on the uninterrupted run's packs in its order, with its weights.
    assert again["final_loss"] == fine["final_loss"]
    runtime = [json.loads((d / RESULT_FILE).read_text())["runtime"] for d in (done, out)]
    assert [r["gradient_checkpointing"] for r in runtime] == [False, True]
    assert runtime[1]["device"] == "cpu" and not runtime[1]["bf16"]
    # The partitioned ZeRO-3 optimizer and parameter shards came back, and the packs after the resume point are
    # the uninterrupted run's: the gathered export matches that run's tensor for tensor.
    resumed, original = load_file(str(out / "model.safetensors")), load_file(str(done / "model.safetensors"))
    assert set(resumed) == set(original)
    for name, tensor in original.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
