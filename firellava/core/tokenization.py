"""Which tokenizers the chat format can trust, and the reference Llama-2 tokenizer the project checks against.

A SentencePiece (Llama) tokenizer converted with the wrong merge order splits runs of spaces differently from
the model's own (`"a  b"` as `▁a ▁▁ b` instead of `▁a ▁ ▁b`): every prompt with such a run would reach the
model as token sequences it never saw in pretraining. `check_whitespace` refuses such a tokenizer before any
work, on fixed probe strings whose pieces are Llama's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Llama-2's own pieces (its SentencePiece model) for strings whose splitting depends on the merge order.
PROBES = {
    "a  b": ["▁a", "▁", "▁b"],
    "\n\n": ["▁", "<0x0A>", "<0x0A>"],
    "x   y": ["▁x", "▁▁", "▁y"],
}
# Vicuna-v1.5 (and so LLaVA-1.5) loads its tokenizer with `legacy: false`: text right after a special token does
# not start a new word. A legacy tokenizer gives `▁US ER` after every `</s>` of a multi-round conversation.
SPECIAL_PROBE = ("</s>USER:", ["</s>", "USER", ":"])
FETCH_SCRIPT = "scripts/fetch_reference_tokenizer.sh"


class TokenizerMismatch(ValueError):
    """A tokenizer that would feed the model other token sequences than its own tokenizer does."""


def is_sentencepiece(tokenizer: Any) -> bool:
    """Llama-style: `▁` word boundaries with byte fallback (the toy world's byte-level BPE is not)."""
    vocab = tokenizer.get_vocab()
    return "▁" in vocab and "<0x0A>" in vocab


def check_whitespace(tokenizer: Any, name: str) -> None:
    """Refuse a SentencePiece tokenizer whose pieces differ from Llama's (loaded as Vicuna-v1.5's) on the probes."""
    if not is_sentencepiece(tokenizer):
        return
    for text, expected in PROBES.items():
        got = tokenizer.tokenize(text)
        if got != expected:
            raise TokenizerMismatch(
                f"tokenizer {name}: {text!r} tokenizes as {got}, Llama's SentencePiece model gives {expected}. "
                "Its merges are not the model's (a tokenizer.model converted by transformers orders merges by "
                "piece id). Point model.tokenizer at a checkpoint that ships a tokenizer.json with the real "
                "merges (e.g. llava-hf/llava-1.5-13b-hf)."
            )
    text, expected = SPECIAL_PROBE
    got = tokenizer.tokenize(text)
    if got != expected:
        raise TokenizerMismatch(
            f"tokenizer {name}: {text!r} tokenizes as {got}, Vicuna-v1.5's gives {expected}: it is loaded as a "
            "legacy Llama tokenizer. Set `legacy: false` in its tokenizer_config.json (as Vicuna-v1.5's has); "
            "transformers >= 5 builds the pre-tokenizer from that flag, whatever normalizer tokenizer.json names."
        )


def reference_tokenizer_dir() -> Path:
    """Where the install put Llama-2's tokenizer (`FETCH_SCRIPT`); FIRELLAVA_REFERENCE_TOKENIZER overrides."""
    default = Path(sys.prefix) / "reference-tokenizers" / "llama2"
    return Path(os.environ.get("FIRELLAVA_REFERENCE_TOKENIZER", default))


def load_reference_tokenizer() -> Any:
    """Llama-2's tokenizer loaded as transformers loads Vicuna-v1.5's, with the project's `<image>` and `<pad>`."""
    from transformers import AutoTokenizer

    from firellava.core.model_builder import add_special_tokens

    path = reference_tokenizer_dir()
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no Llama-2 reference tokenizer at {path}: run `bash {FETCH_SCRIPT}` (make install does; it needs npm)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    add_special_tokens(tokenizer)
    return tokenizer
