"""GPU path of both training stages: bf16 + tf32, gradient checkpointing and flash-attn 2 (when installed) on
one CUDA device through the real launcher; the result records what ran, and the export loads and generates."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine
from firellava.train.export import RESULT_FILE
from firellava.train.launch import run_finetune, run_pretrain
from tests.test_train_stages import tiny_cfg

pytestmark = pytest.mark.gpu

FLASH = importlib.util.find_spec("flash_attn") is not None


def test_stages_on_gpu_run_bf16_with_gradient_checkpointing(toy_world, tmp_path):
    settings = [
        f"train.{stage}.{key}=true"
        for stage in ("pretrain", "finetune")
        for key in ("bf16", "tf32", "gradient_checkpointing", *(("flash_attention",) if FLASH else ()))
    ]
    cfg = tiny_cfg(toy_world, tmp_path, "train.num_gpus=1", "model.dtype=bfloat16", *settings)
    run_pretrain(cfg)
    fine = run_finetune(cfg)
    for stage_dir in (cfg.paths.pretrain_dir, cfg.paths.finetune_dir):
        result = json.loads((Path(stage_dir) / RESULT_FILE).read_text())
        runtime = result["runtime"]
        assert runtime["device"] == "cuda" and runtime["bf16"] and runtime["tf32"], runtime
        assert runtime["gradient_checkpointing"], runtime
        # Both stages' rows are padding-free (packs; the demo's unpacked rows): per-sample sdpa without flash-attn.
        assert runtime["attn_implementation"] == ("flash_attention_2" if FLASH else "sdpa_varlen"), runtime
        assert result["batch"]["world_size"] == 1
        assert math.isfinite(result["final_loss"])

    engine = build_engine(EngineSpec("transformers", {"device": "cuda", "dtype": "bfloat16"}), fine["dir"])
    prompt = Prompt(
        messages=[{"role": "user", "content": "<image>\nWhat color is the circle?"}],
        images=[Image.new("RGB", (50, 70), (220, 30, 30))],
    )
    [gen] = engine.generate([prompt], SamplingParams(max_tokens=4))
    assert gen.completion_tokens <= 4 and next(engine.model.parameters()).dtype == torch.bfloat16
