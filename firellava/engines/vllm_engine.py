"""vLLM backend (GPU): offline batch inference (`VLLMEngine`, behind the one engine interface) and the async
engine the server runs (`AsyncVLLMEngine`). Both build their inputs, sampling and engine arguments with the same
functions below; vllm is imported only when an engine is built, so CPU machines never need it.

Chat prompts go through `LLM.chat` (the checkpoint's own chat template, one BOS); a raw text prompt that already
starts with BOS is passed as token ids, because generating from the text would add a second one (vllm#2012). The
offline engine hands vLLM the whole batch at once: it schedules continuously and its prefix cache serves shared
prompt prefixes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from firellava.core.chat_format import prompt_ids
from firellava.engines.base import Generation, Prompt, SamplingParams


def engine_args(options: Mapping[str, Any]) -> dict[str, Any]:
    """An engine spec's options in vLLM's names, for `vllm.LLM` and `AsyncEngineArgs` alike: the project's
    `batch_size` (sequences decoded together) is vLLM's `max_num_seqs`; `device` means nothing to vLLM."""
    args = dict(options)
    args.pop("device", None)
    if "batch_size" in args:
        args["max_num_seqs"] = args.pop("batch_size")
    return args


def sampling_params(params: SamplingParams, **extra: Any) -> Any:
    from vllm import SamplingParams as VllmSamplingParams

    return VllmSamplingParams(
        max_tokens=params.max_tokens,  # vLLM's own default is 16
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop) or None,
        seed=params.seed,
        **extra,
    )


def text_input(prompt: Prompt, tokenizer: Any) -> dict[str, Any]:
    """A raw text prompt (and its images) as a vLLM input: the token ids training computes for the same text
    (`chat_format.prompt_ids`), each `<image>` one placeholder that vLLM widens to the image's features."""
    item: dict[str, Any] = {"prompt_token_ids": prompt_ids(prompt.text or "", tokenizer)}
    if prompt.images:
        item["multi_modal_data"] = {"image": list(prompt.images)}
    return item


def chat_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """`{"type": "image"}` parts take the prompt's images in order, as PIL image parts."""
    images = iter(prompt.images)
    out = []
    for m in prompt.messages or ():
        content = m["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_pil", "image_pil": next(images)} if part.get("type") == "image" else part
                for part in content
            ]
        out.append({**m, "content": content})
    return out


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


class VLLMEngine:
    def __init__(self, model: str, model_name: str | None = None, **options: Any) -> None:
        from vllm import LLM

        self.model_name = model_name or model
        self.llm = LLM(model=model, **engine_args(options))
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        sampling = sampling_params(params)
        chat = [i for i, p in enumerate(prompts) if p.messages is not None]
        text = [i for i, p in enumerate(prompts) if p.messages is None]
        outputs: dict[int, Any] = {}
        if chat:
            res = self.llm.chat([chat_messages(prompts[i]) for i in chat], sampling, use_tqdm=False)
            outputs.update(zip(chat, res))
        if text:
            inputs = [text_input(prompts[i], self.tokenizer) for i in text]
            outputs.update(zip(text, self.llm.generate(inputs, sampling, use_tqdm=False)))
        results = []
        for i in range(len(prompts)):
            out = outputs[i]
            completion = out.outputs[0]
            results.append(
                Generation(
                    text=completion.text,
                    prompt_tokens=len(out.prompt_token_ids),
                    completion_tokens=len(completion.token_ids),
                    finish_reason=_finish(completion.finish_reason),
                )
            )
        return results


class AsyncVLLMEngine:
    """vLLM's AsyncLLM behind the server's engine interface (`firellava.serve.engines.ServeEngine`). The server
    renders the prompt with the checkpoint's own chat template (loaded with transformers, as the CPU engine does)
    and sends text plus decoded images; vLLM's own chat parsing helpers change signature between releases."""

    def __init__(
        self, model: str, model_name: str | None = None, max_images_per_prompt: int = 1, **options: Any
    ) -> None:
        from transformers import AutoConfig, AutoProcessor
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_name = model_name or model
        self.processor = AutoProcessor.from_pretrained(model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        config = AutoConfig.from_pretrained(model)
        self.image_tokens = int(getattr(config, "image_seq_length", 0) or 0)
        args = AsyncEngineArgs(
            model=model, limit_mm_per_prompt={"image": max_images_per_prompt}, **engine_args(options)
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

    async def stream(self, prompt: Prompt, params: SamplingParams) -> AsyncIterator[str | Generation]:
        from vllm.sampling_params import RequestOutputKind

        inputs = text_input(prompt, self.tokenizer)
        sampling = sampling_params(params, output_kind=RequestOutputKind.DELTA)
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
                    finish = _finish(piece.finish_reason)
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
