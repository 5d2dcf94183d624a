"""How much of each prompt is the shared prefix (system message + few-shot examples), in the teacher's tokens:
the part vLLM's prefix cache computes once per type instead of once per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from firellava.core import chat_format
from firellava.engines import Prompt


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The ids the engines feed the teacher: its chat template rendered, then the chat format's `prompt_ids`."""
    text = tokenizer.apply_chat_template(list(prompt.messages), add_generation_prompt=True, tokenize=False)
    return chat_format.prompt_ids(text, tokenizer)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def shared_prefix(
    tokenizer: Any, prompts_by_type: Mapping[str, Sequence[Prompt]]
) -> dict[str, dict[str, float]]:
    """Per type: the token length of the prefix shared by all its prompts and the fraction of prompt tokens
    it makes up (a type with a single prompt has no measurable shared prefix and is left out)."""
    out = {}
    for kind, prompts in prompts_by_type.items():
        if len(prompts) < 2:
            continue
        seqs = [prompt_ids(tokenizer, p) for p in prompts]
        n = common_prefix(seqs)
        out[kind] = {
            "shared_prefix_tokens": n,
            "shared_prefix_fraction": round(n * len(seqs) / sum(len(s) for s in seqs), 4),
        }
    return out
