"""vLLM backend (GPU, or CPU with vLLM's CPU build): offline batch inference (`VLLMEngine`, behind the one engine interface) and the async
engine the server runs (`AsyncVLLMEngine`). Both build their inputs, sampling and engine arguments with the same
functions below; vllm is imported only when an engine is built (after `vllm_environment()`), so machines without
it never need it. Both engines hold an engine core: `close()` shuts it down (one alive at interpreter exit can
hang the process), and each is a context manager.

Chat prompts go through `LLM.chat` (the checkpoint's own chat template, one BOS); a raw text prompt that already
starts with BOS is passed as token ids, because generating from the text would add a second one (vllm#2012). The
offline engine hands vLLM the whole batch at once: it schedules continuously and its prefix cache serves shared
prompt prefixes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from firellava.core.chat_format import prompt_ids
from firellava.engines.base import Generation, Prompt, SamplingParams

# Set before vllm is imported, wherever the project starts it: no usage report leaves the machine, and a
# single-node engine talks to itself over loopback rather than over the first external interface.
PRIVATE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
LOCAL_ENV = {"VLLM_HOST_IP": "127.0.0.1"}
# vLLM's CPU build only: pinning OpenMP threads to cores fights with other processes on a shared machine.
CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}


def vllm_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vLLM runs in (`os.environ` unless `env` is given, changed in place): the privacy variables
    always, the others unless already set."""
    env = os.environ if env is None else env
    env.update(PRIVATE_ENV)
    for key, value in {**LOCAL_ENV, **CPU_ENV}.items():
        env.setdefault(key, value)
    return env


def engine_args(options: Mapping[str, Any], cpu: bool = False) -> dict[str, Any]:
    """An engine spec's options in vLLM's names, for `vllm.LLM` and `AsyncEngineArgs` alike: the project's
    `batch_size` (sequences decoded together) is vLLM's `max_num_seqs`; `device` means nothing to vLLM.

    On vLLM's CPU build (`cpu`) the GPU settings give way: `gpu_memory_utilization` would be a share of host RAM,
    so the KV cache gets `cpu_kv_cache_bytes` instead; tensor parallelism would start more engine processes than
    a CPU run uses; compilation is skipped (`enforce_eager`) and prefills are not chunked, unless the options
    ask otherwise."""
    args = dict(options)
    args.pop("device", None)
    cpu_kv_cache_bytes = args.pop("cpu_kv_cache_bytes", None)
    if "batch_size" in args:
        args["max_num_seqs"] = args.pop("batch_size")
    if cpu:
        args.pop("gpu_memory_utilization", None)
        args.pop("tensor_parallel_size", None)
        if cpu_kv_cache_bytes is not None:
            args.setdefault("kv_cache_memory_bytes", int(cpu_kv_cache_bytes))
        args.setdefault("enforce_eager", True)
        # A seeded sampling request whose prefill is split across steps crashes the CPU build (its CPU generator
        # has no offset to rewind); whole prefills avoid it.
        args.setdefault("enable_chunked_prefill", False)
    return args


def on_cpu() -> bool:
    """Whether the installed vLLM runs on CPU (its CPU build), whatever accelerator the machine has."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(getattr(current_platform, "is_cpu", lambda: False)())


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


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class VLLMEngine(_Closing):
    def __init__(self, model: str, model_name: str | None = None, **options: Any) -> None:
        vllm_environment()
        from vllm import LLM

        self.model_name = model_name or model
        self.llm = LLM(model=model, **engine_args(options, cpu=on_cpu()))
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Shut the engine core down (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

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


class AsyncVLLMEngine(_Closing):
    """vLLM's AsyncLLM behind the server's engine interface (`firellava.serve.engines.ServeEngine`). The server
    renders the prompt with the checkpoint's own chat template (loaded with transformers, as the CPU engine does)
    and sends text plus decoded images; vLLM's own chat parsing helpers change signature between releases."""

    def __init__(
        self, model: str, model_name: str | None = None, max_images_per_prompt: int = 1, **options: Any
    ) -> None:
        vllm_environment()
        from transformers import AutoConfig, AutoProcessor
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_name = model_name or model
        self.processor = AutoProcessor.from_pretrained(model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        config = AutoConfig.from_pretrained(model)
        self.image_tokens = int(getattr(config, "image_seq_length", 0) or 0)
        args = AsyncEngineArgs(
            model=model,
            limit_mm_per_prompt={"image": max_images_per_prompt},
            **engine_args(options, cpu=on_cpu()),
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
