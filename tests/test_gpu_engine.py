"""GPU path of the transformers engine: fp32 and bf16 on CUDA, batched equals one by one, image tokens counted."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from firellava.engines import EngineSpec, Prompt, SamplingParams, build_engine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def llava_dir(tiny_llava, tmp_path_factory):
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    return str(save_llava(model, processor, tmp_path_factory.mktemp("gpu") / "llava"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_on_cuda(llava_dir, dtype):
    engine = build_engine(
        EngineSpec("transformers", {"device": "cuda", "dtype": dtype, "batch_size": 8}), llava_dir
    )
    assert next(engine.model.parameters()).device.type == "cuda"
    assert next(engine.model.parameters()).dtype == getattr(torch, dtype)
    colours = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (250, 200, 0)]
    prompts = [
        Prompt(
            messages=[{"role": "user", "content": f"<image>\nQuestion {i}: what color?"}],
            images=[Image.new("RGB", (64, 48), c)],
        )
        for i, c in enumerate(colours)
    ]
    params = SamplingParams(max_tokens=8)
    batched = engine.generate(prompts, params)
    single = [engine.generate([p], params)[0] for p in prompts]
    if dtype == "float32":  # bf16 rounding may differ between padded and unpadded rows; fp32 must not
        assert [g.text for g in batched] == [g.text for g in single]
    for g in batched:
        assert g.prompt_tokens > engine.model.config.image_seq_length
        assert g.finish_reason in ("stop", "length")
