"""vLLM backend (GPU): offline batch inference behind the one engine interface. A thin adapter; vllm is imported
only when an engine is built, so CPU machines never need it.

Chat prompts go through `LLM.chat` (the checkpoint's own chat template, one BOS); a raw text prompt that already
starts with BOS is passed as token ids, because `LLM.generate(text)` would add a second one (vllm#2012). The
whole batch goes to vLLM at once: it schedules continuously and its prefix cache serves shared prompt prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firellava.engines.base import Generation, Prompt, SamplingParams


class VLLMEngine:
    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        max_model_len: int | None = None,
        load_format: str = "auto",
        seed: int = 0,
        model_name: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        from vllm import LLM

        self.model_name = model_name or model
        self.llm = LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            max_model_len=max_model_len,
            load_format=load_format,
            seed=seed,
            **engine_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def _sampling(self, params: SamplingParams):
        from vllm import SamplingParams as VllmSamplingParams

        return VllmSamplingParams(
            max_tokens=params.max_tokens,  # vLLM's own default is 16
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
        )

    @staticmethod
    def _chat_messages(prompt: Prompt) -> list[dict[str, Any]]:
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

    def _text_input(self, prompt: Prompt) -> dict[str, Any]:
        text = prompt.text or ""
        bos = self.tokenizer.bos_token
        item: dict[str, Any]
        if bos and text.startswith(bos):
            item = {"prompt_token_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]}
        else:
            item = {"prompt": text}
        if prompt.images:
            item["multi_modal_data"] = {"image": list(prompt.images)}
        return item

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        sampling = self._sampling(params)
        chat = [i for i, p in enumerate(prompts) if p.messages is not None]
        text = [i for i, p in enumerate(prompts) if p.messages is None]
        outputs: dict[int, Any] = {}
        if chat:
            res = self.llm.chat([self._chat_messages(prompts[i]) for i in chat], sampling, use_tqdm=False)
            outputs.update(zip(chat, res))
        if text:
            res = self.llm.generate([self._text_input(prompts[i]) for i in text], sampling, use_tqdm=False)
            outputs.update(zip(text, res))
        results = []
        for i in range(len(prompts)):
            out = outputs[i]
            completion = out.outputs[0]
            results.append(
                Generation(
                    text=completion.text,
                    prompt_tokens=len(out.prompt_token_ids),
                    completion_tokens=len(completion.token_ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
            )
        return results
