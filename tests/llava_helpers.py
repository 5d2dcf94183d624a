"""Test helpers around a built model: the chat format as one string, and checkpoints saved and loaded as the
pipeline does it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from firellava.core.chat_format import IGNORE_INDEX, encode, expand_images, segments
from firellava.train.export import save_model_dir


def render(turns: Any, **kwargs: Any) -> str:
    """The prompt string of the Python rendering (what the Jinja `chat_template` must render too)."""
    return "".join(s.text for s in segments(turns, **kwargs))


def training_prompt_ids(
    messages: list[dict[str, Any]], tokenizer: Any, image_id: int, copies: int
) -> list[int]:
    """What training feeds the model before the answer to the last user message of `messages` (chat messages,
    image parts included): the ids of the whole conversation with an answer appended, up to that answer's first
    supervised token, each image widened to `copies` placeholders. Inference must feed exactly these."""
    enc = encode([*messages, {"role": "assistant", "content": "Yes."}], tokenizer)
    start = len(enc.labels)
    while start > 0 and enc.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return expand_images(enc.input_ids[:start], image_id, copies)


def save_llava(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out_dir: str | Path) -> Path:
    """A checkpoint directory written by the finetune stage's own writer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model_dir(out, model.state_dict(), model, processor)
    return out


def load_llava(
    path: str | Path, dtype: str = "float32"
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
    return model, LlavaProcessor.from_pretrained(path)
