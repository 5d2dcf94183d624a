"""vLLM's async engine behind the server (GPU only): the tiny Llava checkpoint, greedy, built from engine.serve the
way the server builds it."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from firellava.engines.base import EngineSpec, Generation, Prompt, SamplingParams

pytestmark = pytest.mark.gpu


def test_async_vllm_engine_generates_and_streams(tiny_llava, tmp_path):
    pytest.importorskip("vllm")
    from firellava.engines.vllm_engine import AsyncVLLMEngine
    from firellava.serve.engines import build_serve_engine
    from firellava.serve.settings import ServerSettings
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    path = str(save_llava(model, processor, tmp_path / "llava"))
    options = {"gpu_memory_utilization": 0.3, "max_model_len": 512, "enforce_eager": True, "batch_size": 4}
    engine = build_serve_engine(
        ServerSettings(model=path, model_name="tiny", engine=EngineSpec("vllm", options))
    )
    assert isinstance(engine, AsyncVLLMEngine) and engine.model_name == "tiny"
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
