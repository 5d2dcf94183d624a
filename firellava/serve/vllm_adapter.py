"""vLLM's async engine behind the server's engine interface (GPU). Thin on purpose: the prompt is rendered by the
checkpoint's own chat template (loaded with transformers, exactly as the CPU engine does), and vLLM gets the text
plus the decoded images; vLLM's own chat parsing helpers change signature between releases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from firellava.engines.base import Generation, Prompt, SamplingParams


class VLLMServeEngine:
    def __init__(
        self, model: str, model_name: str, max_images_per_prompt: int = 1, **engine_args: Any
    ) -> None:
        # Imported here: vLLM needs a GPU and is an optional extra (`EXTRAS=gpu make install`).
        from transformers import AutoConfig, AutoProcessor
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_name = model_name
        self.processor = AutoProcessor.from_pretrained(model)
        config = AutoConfig.from_pretrained(model)
        self.image_tokens = int(getattr(config, "image_seq_length", 0) or 0)
        args = AsyncEngineArgs(
            model=model, limit_mm_per_prompt={"image": max_images_per_prompt}, **_engine_args(engine_args)
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self.max_model_len = self.engine.model_config.max_model_len

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        return self.processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def expect(self, n: int) -> None:
        """vLLM batches continuously; nothing to wait for."""

    def healthy(self) -> bool:
        return not getattr(self.engine, "errored", False)

    def close(self) -> None:
        self.engine.shutdown()

    def _request(self, prompt: Prompt, params: SamplingParams) -> tuple[dict[str, Any], Any]:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        inputs: dict[str, Any] = {"prompt": prompt.text}
        if prompt.images:
            images = list(prompt.images)
            inputs["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        sampling = VSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        return inputs, sampling

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Generation]:
        inputs, sampling = self._request(prompt, params)
        request_id = uuid.uuid4().hex
        text, completion, prompt_tokens, finish = "", 0, 0, None
        try:
            async for out in self.engine.generate(inputs, sampling, request_id=request_id):
                # prompt_token_ids already hold the expanded image tokens (576 per image in production).
                prompt_tokens = len(out.prompt_token_ids or [])
                piece = out.outputs[0]
                completion += len(piece.token_ids)
                if piece.text:
                    text += piece.text
                    yield piece.text
                if piece.finish_reason:
                    finish = "length" if piece.finish_reason == "length" else "stop"
        finally:
            if finish is None:  # the client went away mid-generation
                await self.engine.abort(request_id)
        yield Generation(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=completion, finish_reason=finish
        )

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Generation:
        final = None
        async for item in self.stream(prompt, params):
            if isinstance(item, Generation):
                final = item
        assert final is not None
        return final


def _engine_args(options: dict[str, Any]) -> dict[str, Any]:
    """The CPU engine's option names mapped onto vLLM's (device/batch_size mean nothing there)."""
    options = dict(options)
    options.pop("device", None)
    if "batch_size" in options:
        options["max_num_seqs"] = options.pop("batch_size")
    return options
