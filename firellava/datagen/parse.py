"""Teacher text -> LLaVA turns, or a reject reason. Every generation ends as exactly one of the two.

The format is the few-shot one: `Question:` / `Answer:` blocks separated by `===`; a detail
response is the bare paragraph, and its question comes from the description instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.datagen.prompts import SEPARATOR

# Reasons, in the order they are checked; stats and the data card list them all, zero or not.
REJECT_REASONS: tuple[str, ...] = (
    "truncated",
    "empty",
    "malformed",
    "wrong_turn_count",
    "template_marker",
    "reveals_source",
    "too_long",
    "duplicate",
    # After parsing, from the stage's filters: the grounding check (grounding.py) and near-duplicates.
    "hallucination",
    "count_mismatch",
    "near_duplicate",
)
# Reasons that are not parse failures: the text parsed, a later filter left it out.
FILTER_REASONS: tuple[str, ...] = ("duplicate", "hallucination", "count_mismatch", "near_duplicate")

_PREFIX = {"human": "Question:", "gpt": "Answer:"}
# Strings that would become real conversation boundaries or roles in the chat format.
_TEMPLATE_MARKERS = ("</s>", "<s>", "USER:", "ASSISTANT:", "[INST]", "[/INST]", "<<SYS>>", IMAGE_TOKEN)
# Answers must read as if the model saw the image: no trace of the captions, boxes or coordinates it was given.
_SOURCE_LEAKS = re.compile(
    r"bounding box|coordinate|\bcaptions?\b|\bannotat|object list|"
    r"\b(?:given|provided|five) (?:sentences|descriptions)|"
    r"\[\s*\d*\.\d+\s*,|\b0\.\d{3}\b",
    re.IGNORECASE,
)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ParseRules:
    max_chars: int = 6000  # answers + questions; keeps text + 576 image tokens inside 2048
    min_pairs: int = 1
    max_pairs: int = 10


def _pairs_from_blocks(text: str) -> list[tuple[str, str]]:
    blocks = [b.strip() for b in text.split(SEPARATOR)]
    blocks = [b for b in blocks if b]
    pairs: list[tuple[str, str]] = []
    expected = ("human", "gpt")
    turns: list[str] = []
    for i, block in enumerate(blocks):
        prefix = _PREFIX[expected[i % 2]]
        if not block.startswith(prefix):
            raise Rejected("malformed", f"block {i} does not start with {prefix!r}")
        body = block[len(prefix) :].strip()
        if not body:
            raise Rejected("empty", f"block {i} is empty")
        turns.append(body)
    if len(turns) % 2:
        raise Rejected("malformed", f"{len(turns)} blocks: a question without an answer")
    pairs = list(zip(turns[0::2], turns[1::2]))
    for q, a in pairs:
        for body in (q, a):
            if "Question:" in body or "Answer:" in body:
                raise Rejected("malformed", "a turn contains a leftover Question:/Answer: marker")
    return pairs


def parse_generation(
    kind: str, text: str, finish_reason: str, rules: ParseRules, detail_question: str | None = None
) -> list[tuple[str, str]]:
    """The (question, answer) pairs of one generation; raises `Rejected` with a reason."""
    if finish_reason == "length":
        raise Rejected("truncated", "max_tokens reached")
    text = text.strip()
    if not text:
        raise Rejected("empty")
    if kind == "detail":
        if detail_question is None:
            raise ValueError("a detail generation needs its instruction")
        if SEPARATOR in text or text.startswith(("Question:", "Answer:")):
            raise Rejected("malformed", "a detail response must be one paragraph, not Q/A blocks")
        pairs = [(detail_question, text)]
    else:
        pairs = _pairs_from_blocks(text)
        low, high = (1, 1) if kind == "complex_reasoning" else (rules.min_pairs, rules.max_pairs)
        if not low <= len(pairs) <= high:
            raise Rejected("wrong_turn_count", f"{len(pairs)} Q/A pairs, expected {low}..{high}")
    for q, a in pairs:
        for body in (q, a):
            marker = next((m for m in _TEMPLATE_MARKERS if m in body), None)
            if marker:
                raise Rejected("template_marker", f"contains {marker!r}")
        hit = _SOURCE_LEAKS.search(a) or (_SOURCE_LEAKS.search(q) if kind != "detail" else None)
        if hit:
            raise Rejected("reveals_source", f"mentions {hit.group(0)!r}")
    if sum(len(q) + len(a) for q, a in pairs) > rules.max_chars:
        raise Rejected("too_long", f"more than {rules.max_chars} characters")
    return pairs


def dedup_key(pairs: list[tuple[str, str]]) -> str:
    """Whitespace- and case-insensitive text of the whole conversation."""
    return " | ".join(" ".join(t.lower().split()) for pair in pairs for t in pair)
