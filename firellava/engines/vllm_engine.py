"""vLLM backend (GPU, or CPU with vLLM's CPU build): offline batch inference (`VLLMEngine`, behind the one engine interface) and the async
engine the server runs (`AsyncVLLMEngine`). Both build their inputs, sampling and engine arguments with the same
functions below; vllm is imported only when an engine is built (after `vllm_environment()`), so machines without
it never need it. Both engines hold an engine core: `close()` shuts it down (one alive at interpreter exit can
hang the process), and each is a context manager.

vLLM never tokenizes a prompt itself: chat messages are rendered with the checkpoint's own chat template (loaded
with transformers, as the transformers engine loads it) and every prompt reaches vLLM as the token ids training
computes for the same text (`chat_format.prompt_ids`: one BOS, each `<image>` one placeholder id that vLLM's
LLaVA processor widens to the image's feature count). vLLM's own tokenization of the rendered string would differ
from training's at a SentencePiece word boundary after `<s>` and after `<image>`. The offline engine hands vLLM
the whole batch at once: it schedules continuously and its prefix cache serves shared prompt prefixes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from firellava.core.chat_format import prompt_ids
from firellava.engines.base import Generation, Prompt, SamplingParams, load_template_owner, render_chat

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


def _generation(
    fed: Sequence[int] | None, text: str, token_ids: Sequence[int], reason: str | None
) -> Generation:
    """A finished vLLM request; its prompt ids already hold the widened image placeholders (576 per image in
    production)."""
    fed = tuple(fed or ())
    return Generation(
        text=text,
        prompt_tokens=len(fed),
        completion_tokens=len(token_ids),
        finish_reason=_finish(reason),
        prompt_token_ids=fed,
        token_ids=tuple(token_ids),
    )


def drops_leading_boundary(tokenizer: Any) -> bool:
    """Whether decoding an answer's ids on their own drops the word boundary that starts them, as Llama's
    SentencePiece decoder does with the `▁` of `▁The`, and as transformers' decode (the transformers engine's
    text) therefore does. vLLM detokenizes the answer in the prompt's context, so there it is a space."""
    ids = tokenizer("x x", add_special_tokens=False)["input_ids"]
    return len(ids) > 1 and not tokenizer.decode(ids[1:]).startswith(" ")


def answer_text(text: str, first: bool, drops_boundary: bool) -> str:
    """`text` (the first piece of an answer when `first`) as the transformers engine renders it."""
    return text[1:] if first and drops_boundary and text.startswith(" ") else text


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
        self.template = load_template_owner(model)
        self.tokenizer = getattr(self.template, "tokenizer", self.template)
        self.drops_boundary = drops_leading_boundary(self.tokenizer)
        self.llm = LLM(model=model, **engine_args(options, cpu=on_cpu()))

    def close(self) -> None:
        """Shut the engine core down (idempotent)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()

    def render(self, prompt: Prompt) -> str:
        """The prompt string: chat messages through the checkpoint's own chat template."""
        return prompt.text if prompt.messages is None else render_chat(self.template, prompt.messages)

    def inputs(self, prompt: Prompt) -> dict[str, Any]:
        """What vLLM is given for `prompt`: token ids, never text."""
        return text_input(Prompt(text=self.render(prompt), images=prompt.images), self.tokenizer)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        outputs = self.llm.generate(
            [self.inputs(p) for p in prompts], sampling_params(params), use_tqdm=False
        )
        return [
            _generation(
                out.prompt_token_ids,
                answer_text(c.text, True, self.drops_boundary),
                c.token_ids,
                c.finish_reason,
            )
            for out, c in ((out, out.outputs[0]) for out in outputs)
        ]


class AsyncVLLMEngine(_Closing):
    """vLLM's AsyncLLM behind the server's engine interface (`firellava.serve.engines.ServeEngine`). The server
    renders the prompt with the checkpoint's own chat template (loaded with transformers, as the CPU engine does)
    and sends text plus decoded images; vLLM's own chat parsing helpers change signature between releases."""

    def __init__(
        self, model: str, model_name: str | None = None, max_images_per_prompt: int = 1, **options: Any
    ) -> None:
        vllm_environment()
        from transformers import AutoConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model_name = model_name or model
        self.processor = load_template_owner(model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.drops_boundary = drops_leading_boundary(self.tokenizer)
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
        return render_chat(self.processor, messages)

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
        text, completion, fed, finish, first = "", [], None, None, True
        try:
            async for out in self.engine.generate(inputs, sampling, request_id=request_id):
                fed = out.prompt_token_ids or fed
                piece = out.outputs[0]  # only the new tokens (DELTA)
                completion += piece.token_ids
                piece_text = answer_text(piece.text, first, self.drops_boundary)
                first = first and not piece.text
                if piece_text:
                    text += piece_text
                    yield piece_text
                finish = piece.finish_reason or finish
        finally:
            if finish is None:  # the client went away mid-generation
                await self.engine.abort(request_id)
        yield _generation(fed, text, completion, finish)

    async def generate(self, prompt: Prompt, params: SamplingParams) -> Generation:
        final = None
        async for item in self.stream(prompt, params):
            if isinstance(item, Generation):
                final = item
        assert final is not None
        return final
