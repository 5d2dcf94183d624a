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

from firellava.core.chat_format import IMAGE_TOKEN, expand_images, prompt_ids
from firellava.engines.base import Generation, Prompt, SamplingParams, render_chat


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
        return render_chat(self.processor or self.tokenizer, prompt.messages)

    def _encode(self, texts: list[str], images: list) -> dict[str, torch.Tensor]:
        """Left-padded ids through the chat format's `prompt_ids` (the ids training computes for the same text),
        each `<image>` widened to the model's image tokens, and the image processor's pixel values."""
        rows = [prompt_ids(t, self.tokenizer) for t in texts]
        batch: dict[str, torch.Tensor] = {}
        if self.multimodal:
            image_id = self.model.config.image_token_id
            slots = sum(row.count(image_id) for row in rows)
            if slots != len(images):
                raise ValueError(
                    f"{slots} {IMAGE_TOKEN} placeholder(s) in the prompts but {len(images)} image(s)"
                )
            copies = self.model.config.image_seq_length
            rows = [expand_images(row, image_id, copies) for row in rows]
            if images:
                pixels = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
                batch["pixel_values"] = pixels.to(self.model.dtype)
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        batch.update(input_ids=ids, attention_mask=mask)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ------------------------------------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[start : start + self.batch_size], params)
        return out

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
            fed = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
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
                    prompt_tokens=len(fed),
                    completion_tokens=len(new),
                    finish_reason=finish,
                    prompt_token_ids=tuple(fed),
                    token_ids=tuple(new),
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
