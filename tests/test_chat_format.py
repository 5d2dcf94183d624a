"""The one chat format: exact strings, masks from character offsets, and Python == Jinja rendering."""

from __future__ import annotations

import random

import pytest

from firellava.core.chat_format import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM,
    IGNORE_INDEX,
    ChatFormatError,
    encode,
)
from tests.llava_helpers import render


def conv(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def test_vicuna_v1_string_matches_llava():
    text = render(conv("What is this?\n<image>", "A cat.", "Colour?", "Orange."))
    assert text == (
        f"<s>{DEFAULT_SYSTEM} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT: Orange.</s>"
    )


def test_generation_prompt_and_system_override():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(msgs, add_generation_prompt=True) == "<s>Be brief. USER: Hi ASSISTANT:"
    empty = [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}]
    assert render(empty, add_generation_prompt=True) == "<s>USER: Hi ASSISTANT:"


def test_plain_template_drops_instruction():
    record = conv("Describe the image concisely.\n<image>", "a red circle")
    assert render(record, template="plain") == "<s><image>a red circle\n"


def supervised_text(tokenizer, enc) -> str:
    """The supervised tokens as text, their leading space kept: decoded after a BOS, since Llama's decoder (the
    toy tokenizer's too) strips one leading space from the decoded string."""
    ids = [i for i, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]
    return tokenizer.decode([tokenizer.bos_token_id, *ids])[len(tokenizer.bos_token) :]


def test_multi_turn_masks_only_answers_and_eos(tokenizer):
    record = conv("<image>\nWhat color is the circle?", "red", "How many shapes are there?", "two shapes")
    enc = encode(record, tokenizer)
    assert len(enc.input_ids) == len(enc.labels)
    assert supervised_text(tokenizer, enc) == " red</s> two shapes</s>"
    assert enc.input_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1
    assert enc.labels[0] == IGNORE_INDEX  # BOS
    # As LLaVA's `tokenizer_image_token`: the text after the image is tokenized on its own, so with the toy
    # tokenizer's Llama conventions it starts with a word-boundary `▁` that a whole-string tokenization lacks.
    before, after = render(record).removeprefix(tokenizer.bos_token).split("<image>")
    image = tokenizer.convert_tokens_to_ids("<image>")
    assert enc.input_ids == [
        *tokenizer(before).input_ids,
        image,
        *tokenizer(after, add_special_tokens=False).input_ids,
    ]
    assert tokenizer.convert_ids_to_tokens(enc.input_ids[len(tokenizer(before).input_ids) + 1 :][:2]) == [
        "▁",
        "<0x0A>",
    ]


def test_text_only_and_plain_masks(tokenizer):
    enc = encode(conv("Tell me a joke.", "No."), tokenizer)
    assert supervised_text(tokenizer, enc) == " No.</s>"
    plain = encode(conv("<image>\nDescribe.", "a blue square"), tokenizer, template="plain")
    # The caption is tokenized on its own after the image, as in LLaVA, so it starts at a word boundary.
    assert supervised_text(tokenizer, plain) == " a blue square\n"
    assert plain.labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]  # BOS and the image slot


def test_role_markers_inside_messages_do_not_split(tokenizer):
    tricky = conv("Say ' ASSISTANT: ' please", "Sure: USER: ASSISTANT: done")
    enc = encode(tricky, tokenizer)
    assert supervised_text(tokenizer, enc) == " Sure: USER: ASSISTANT: done</s>"


@pytest.mark.parametrize(
    "record, match",
    [
        (conv("hi", "bye</s>"), "turn 1: message contains the template marker '</s>'"),
        (conv("<s>hi", "bye"), "turn 0: message contains the template marker '<s>'"),
        (conv("hi", "look <image>"), "turn 1: an assistant message contains"),
        ([{"from": "gpt", "value": "x"}], "turn 0: expected a user turn"),
        ([{"from": "robot", "value": "x"}], "field 'from'/'role' is 'robot'"),
    ],
)
def test_bad_conversations_are_refused_with_the_turn(tokenizer, record, match):
    with pytest.raises(ChatFormatError, match=match):
        encode(record, tokenizer, record_id="r1")


WORDS = [
    "red",
    "blue",
    "circle",
    "square",
    "how",
    "many",
    "shapes",
    "<image>",
    "left",
    "of",
    "the",
    "image",
    "what",
    "colour",
    "is",
    ":",
    ",",
    ".",
    "?",
    "!",
    "USER",
    "ASSISTANT",
]


def random_text(rng: random.Random) -> str:
    words = [w for w in rng.choices(WORDS, k=rng.randint(1, 12)) if w != "<image>"]
    text = " ".join(words)
    if rng.random() < 0.3:
        text = text + "\n" + rng.choice(["Answer briefly.", "  spaced  ", "tab\there"])
    return text


def random_conversation(rng: random.Random) -> tuple[list[dict], bool]:
    messages: list[dict] = []
    kind = rng.random()
    if kind < 0.25:
        messages.append({"role": "system", "content": random_text(rng)})
    elif kind < 0.4:
        messages.append({"role": "system", "content": ""})
    turns = rng.randint(1, 4)
    with_image = rng.random() < 0.7
    for i in range(turns):
        text = random_text(rng)
        if i == 0 and with_image:
            if rng.random() < 0.5:  # structured parts, as the OpenAI API and processors send them
                messages.append(
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
                )
            else:
                messages.append(
                    {"role": "user", "content": rng.choice([f"<image>\n{text}", f"{text}\n<image>"])}
                )
        else:
            messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": random_text(rng)})
    generation = rng.random() < 0.5
    if generation:
        messages.append({"role": "user", "content": random_text(rng)})
    return messages, generation


def test_jinja_template_renders_identically(tiny_llava):
    _, processor = tiny_llava
    assert processor.chat_template == CHAT_TEMPLATE
    rng = random.Random(0)
    for _ in range(300):
        messages, generation = random_conversation(rng)
        jinja = processor.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
        assert jinja == render(messages, add_generation_prompt=generation), messages


class _PairTokenizer:
    """Cuts text into two-character tokens whatever the boundaries (no real tokenizer is this careless)."""

    bos_token, eos_token, bos_token_id, unk_token_id = "<s>", "</s>", 1, 0

    def convert_tokens_to_ids(self, token):
        return None

    def convert_ids_to_tokens(self, token_id):
        return f"#{token_id}"

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        spans = [(i, min(i + 2, len(text))) for i in range(0, len(text), 2)]
        ids = [10 + i for i in range(len(spans))]
        if add_special_tokens:
            ids, spans = [self.bos_token_id, *ids], [(0, 0), *spans]
        return {"input_ids": ids, "offset_mapping": spans}


def test_a_token_spanning_prompt_and_answer_is_refused():
    # "<s>USER: hi ASSISTANT:" is 22 characters with the BOS text, 19 without: the answer starts mid-token.
    with pytest.raises(ChatFormatError, match="record 'r2': token .* crosses the boundary between a prompt"):
        encode([{"role": "system", "content": ""}, *conv("hi", "ok")], _PairTokenizer(), record_id="r2")
