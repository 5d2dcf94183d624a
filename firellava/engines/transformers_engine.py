"""transformers backend: `generate()` on CPU (the toy world) or one GPU. Text LLMs and Llava alike."""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from firellava.engines.base import Generation, Prompt, SamplingParams


class TransformersEngine:
    """Batched, left-padded generation. A Llava checkpoint gets its processor (images), a text LLM its tokenizer."""

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        model_name: str | None = None,
    ) -> None:
        self.model_name = model_name or model
        self.device = torch.device(device)
        self.batch_size = batch_size
        config = AutoConfig.from_pretrained(model)
        self.multimodal = config.model_type == "llava"
        if self.multimodal:
            from transformers import LlavaForConditionalGeneration

            self.processor = AutoProcessor.from_pretrained(model)
            self.tokenizer = self.processor.tokenizer
            self.model = LlavaForConditionalGeneration.from_pretrained(model, dtype=getattr(torch, dtype))
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ------------------------------------------------------------------------------------------------ prompts

    def render(self, prompt: Prompt) -> str:
        """The prompt string: chat messages through the checkpoint's own chat template."""
        if prompt.text is not None:
            return prompt.text
        owner = self.processor or self.tokenizer
        return owner.apply_chat_template(list(prompt.messages), add_generation_prompt=True, tokenize=False)

    def _encode(self, texts: list[str], images: list) -> dict[str, torch.Tensor]:
        bos = self.tokenizer.bos_token
        # Templates that already start with BOS must not get a second one.
        add_special = not (bos and all(t.startswith(bos) for t in texts))
        self.tokenizer.padding_side = "left"
        try:
            if self.multimodal and images:
                batch = self.processor(
                    text=texts,
                    images=images,
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=add_special,
                )
            else:
                batch = self.tokenizer(
                    texts, return_tensors="pt", padding=True, add_special_tokens=add_special
                )
        finally:
            self.tokenizer.padding_side = "right"
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        # A batch is encoded with one add_special_tokens choice, so prompts that already start with BOS and
        # prompts that need one never share a batch (one group would get a double or a missing BOS).
        bos = self.tokenizer.bos_token
        groups: dict[bool, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(bool(bos) and self.render(p).startswith(bos), []).append(i)
        out: list[Generation | None] = [None] * len(prompts)
        for indexes in groups.values():
            for start in range(0, len(indexes), self.batch_size):
                chunk = indexes[start : start + self.batch_size]
                for i, g in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params)):
                    out[i] = g
        return out  # type: ignore[return-value]

    def stream(self, prompt: Prompt, params: SamplingParams) -> Generator[str, None, Generation]:
        """Yield text pieces as tokens are generated; the generator's return value is the final `Generation`.

        Its text is authoritative (stop strings cut there); the pieces are the decoded tokens as they come.
        Closing the generator early stops the generation at the next token.
        """
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        result: dict = {}

        def work() -> None:
            try:
                with torch.no_grad():
                    result["generation"] = self._generate_batch(
                        [prompt], params, streamer=streamer, cancel=cancel
                    )[0]
            except BaseException as e:  # re-raised in the consumer's thread
                result["error"] = e
                streamer.end()

        thread = threading.Thread(target=work, name="engine-stream", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            cancel.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        return result["generation"]

    def _generate_batch(
        self,
        prompts: Sequence[Prompt],
        params: SamplingParams,
        streamer: TextIteratorStreamer | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        texts = [self.render(p) for p in prompts]
        images = [img.convert("RGB") for p in prompts for img in p.images]
        if images and not self.multimodal:
            raise ValueError(f"{self.model_name} is a text-only model; it cannot take images")
        batch = self._encode(texts, images)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature > 0
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            do_sample=sample,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        else:  # silence the checkpoint's sampling defaults under greedy decoding
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if streamer is not None:
            kwargs.update(streamer=streamer)
        if cancel is not None:
            kwargs.update(stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]))
        sequences = self.model.generate(**batch, **kwargs)
        prompt_len = batch["input_ids"].shape[1]
        results = []
        for i, seq in enumerate(sequences):
            new = seq[prompt_len:].tolist()
            finish = "length"
            if self.tokenizer.eos_token_id in new:
                new = new[: new.index(self.tokenizer.eos_token_id)]
                finish = "stop"
            new = [t for t in new if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for s in params.stop:
                if s in text:
                    text, finish = text[: text.index(s)], "stop"
            results.append(
                Generation(
                    text=text,
                    prompt_tokens=int(batch["attention_mask"][i].sum()),
                    completion_tokens=len(new),
                    finish_reason=finish,
                )
            )
        return results


class _Cancelled(StoppingCriteria):
    """Stops a generation whose consumer went away (a closed stream)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )
