"""vLLM's async engine behind the server (GPU only): the tiny Llava checkpoint, greedy, through the adapter."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from firellava.engines.base import Generation, Prompt, SamplingParams

pytestmark = pytest.mark.gpu


def test_vllm_adapter_generates_and_streams(tiny_llava, tmp_path):
    pytest.importorskip("vllm")
    from firellava.serve.vllm_adapter import VLLMServeEngine
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    path = str(save_llava(model, processor, tmp_path / "llava"))
    engine = VLLMServeEngine(path, "tiny", gpu_memory_utilization=0.3, max_model_len=512, enforce_eager=True)
    try:
        text = engine.render(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]}]
        )
        prompt = Prompt(text=text, images=[Image.new("RGB", (40, 30), (255, 0, 0))])
        params = SamplingParams(max_tokens=6, temperature=0.0)

        async def both():
            whole = await engine.generate(prompt, params)
            items = [item async for item in engine.stream(prompt, params)]
            return whole, items

        whole, items = asyncio.run(both())
        assert isinstance(items[-1], Generation)
        assert "".join(i for i in items[:-1]) == items[-1].text == whole.text
        assert whole.prompt_tokens > model.config.image_seq_length
        assert 0 < whole.completion_tokens <= 6
    finally:
        engine.close()
