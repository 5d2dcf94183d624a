"""Datagen pieces: COCO contexts (pycocotools on the toy COCO files), seeded selection and sharding, prompts with
a byte-identical prefix, and the parser with every reject reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from firellava.core import chat_format
from firellava.datagen.contexts import (
    ImageContext,
    Instance,
    format_box,
    format_context,
    load_contexts,
    select_work,
)
from firellava.datagen.generate import chunks, shard_work
from firellava.datagen.parse import REJECT_REASONS, ParseRules, Rejected, parse_generation
from firellava.datagen.prefix import prompt_ids, shared_prefix
from firellava.datagen.prompts import LLAVA, TOY, format_response
from firellava.engines import Prompt
from firellava.toy.teacher import LLAMA2_CHAT_TEMPLATE

RULES = ParseRules()


@pytest.fixture(scope="module")
def coco(toy_world):
    return load_contexts(toy_world["coco_instances"], toy_world["coco_captions"])


def test_contexts_from_coco(coco, toy_world):
    assert len(coco.contexts) == toy_world["counts"]["coco_images"] and not coco.without_captions
    ctx = next(iter(coco.contexts.values()))
    assert len(ctx.captions) == 5 and ctx.instances
    with_boxes = format_context(ctx, with_boxes=True).splitlines()
    assert with_boxes[:5] == list(ctx.captions) and with_boxes[5] == ""
    for line in with_boxes[6:]:
        assert re.fullmatch(r"(circle|square|triangle): \[(0|1)\.\d{3}(, (0|1)\.\d{3}){3}\]", line), line
    assert format_context(ctx, with_boxes=False).splitlines() == list(ctx.captions)


def test_box_normalized_by_image_size():
    inst = Instance("dog", (10.0, 20.0, 30.0, 40.0))
    assert format_box(inst, width=100, height=200) == "dog: [0.100, 0.100, 0.400, 0.300]"
    ctx = ImageContext(1, "a.jpg", 100, 200, ("a dog.",), (inst,))
    assert format_context(ctx, True, decimals=2).endswith("dog: [0.10, 0.10, 0.40, 0.30]")


def test_image_without_captions_is_skipped_and_counted(toy_world, tmp_path):
    caps = json.loads(Path(toy_world["coco_captions"]).read_text())
    dropped = caps["images"][0]["id"]
    caps["annotations"] = [a for a in caps["annotations"] if a["image_id"] != dropped]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(caps))
    got = load_contexts(toy_world["coco_instances"], path)
    assert got.without_captions == (dropped,) and dropped not in got.contexts


def test_missing_or_corrupt_annotation_file(toy_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: COCO captions file not found"):
        load_contexts(toy_world["coco_instances"], tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"bad.json: invalid JSON at line 1, column 13"):
        load_contexts(bad, toy_world["coco_captions"])


def test_selection_is_seeded_and_shards_partition_it(coco):
    counts = {"conversation": 5, "detail": 3, "complex_reasoning": 4}
    work = select_work(list(coco.contexts), counts, seed=1)
    assert work == select_work(list(coco.contexts), counts, seed=1)
    assert work != select_work(list(coco.contexts), counts, seed=2)
    assert len({w.id for w in work}) == 12 and {w.type for w in work} == set(counts)
    shards = [shard_work(work, i, 3) for i in range(3)]
    assert sorted(w.id for s in shards for w in s) == sorted(w.id for w in work)
    assert [len(c.items) for c in chunks(work, 2)] == [2, 2, 1, 2, 1, 2, 2]
    with pytest.raises(ValueError, match="only 12 captioned"):
        select_work(list(coco.contexts), {"detail": 13}, seed=1)
    with pytest.raises(ValueError, match="shard_index=3"):
        shard_work(work, 3, 3)


@pytest.fixture(scope="module")
def chat_tokenizer(toy_world):
    tok = AutoTokenizer.from_pretrained(toy_world["models"]["tokenizer"])
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    return tok


def test_prompts_share_a_byte_identical_prefix(coco, chat_tokenizer):
    ctxs = list(coco.contexts.values())[:4]
    for kind in ("conversation", "detail", "complex_reasoning"):
        boxes = kind != "conversation"
        texts = [
            chat_tokenizer.apply_chat_template(
                LLAVA.messages(kind, format_context(c, boxes)), add_generation_prompt=True, tokenize=False
            )
            for c in ctxs
        ]
        fixed = chat_tokenizer.apply_chat_template(LLAVA.messages(kind, "")[:-1], tokenize=False)
        assert all(t.startswith(fixed) for t in texts)  # system + few-shot examples come first, unchanged
        assert texts[0].count("<s>") == len(LLAVA.examples[kind]) + 1 and texts[0].endswith("[/INST]")
        assert format_context(ctxs[0], boxes) in texts[0].split(fixed)[1]
    by_type = {
        k: [Prompt(messages=LLAVA.messages(k, format_context(c, k != "conversation"))) for c in ctxs]
        for k in ("detail", "complex_reasoning")
    }
    fractions = shared_prefix(chat_tokenizer, by_type)
    for k, got in fractions.items():
        ids = prompt_ids(chat_tokenizer, by_type[k][0])
        fixed_ids = chat_format.prompt_ids(
            chat_tokenizer.apply_chat_template(LLAVA.messages(k, "")[:-1], tokenize=False), chat_tokenizer
        )
        assert ids[: len(fixed_ids)] == fixed_ids and got["shared_prefix_tokens"] >= len(fixed_ids) - 1
        assert got["shared_prefix_fraction"] > 0.8


def test_toy_set_states_the_format():
    for kind in ("conversation", "complex_reasoning"):
        assert "===" in TOY.system[kind] and "Question:" in TOY.system[kind]
    with pytest.raises(KeyError, match="no prompts for type 'other'"):
        LLAVA.messages("other", "")


CONV = format_response(
    "conversation", [("What is on the table?", "A red apple."), ("How many?", "Just one.")]
)
REASON = format_response("complex_reasoning", [("Why is it there?", "Someone left it for later.")])


def test_parse_good_generations():
    assert parse_generation("conversation", CONV + "\n===", "stop", RULES) == [
        ("What is on the table?", "A red apple."),
        ("How many?", "Just one."),
    ]
    assert parse_generation("complex_reasoning", REASON, "stop", RULES) == [
        ("Why is it there?", "Someone left it for later.")
    ]
    assert parse_generation("detail", " A cat sleeps on a sofa. ", "stop", RULES, "Describe.") == [
        ("Describe.", "A cat sleeps on a sofa.")
    ]


@pytest.mark.parametrize(
    "kind, text, finish, reason",
    [
        ("conversation", CONV, "length", "truncated"),
        ("conversation", "   ", "stop", "empty"),
        ("conversation", "Question:\nWhat?\n===\nAnswer:\n", "stop", "empty"),
        ("conversation", "What is it?\n===\nAnswer:\nA cat.", "stop", "malformed"),
        ("conversation", "Question:\nWhat is it?", "stop", "malformed"),
        ("conversation", "Question:\nA?\n===\nAnswer:\nB. Question: C?", "stop", "malformed"),
        ("complex_reasoning", CONV, "stop", "wrong_turn_count"),
        ("detail", CONV, "stop", "malformed"),
        ("conversation", "Question:\nWhat?\n===\nAnswer:\nA cat.</s>USER: hi", "stop", "template_marker"),
        ("detail", "A person: [0.312, 0.104, 0.655, 0.987] stands.", "stop", "reveals_source"),
        ("detail", "According to the captions, a dog runs.", "stop", "reveals_source"),
        (
            "conversation",
            "Question:\nWhere?\n===\nAnswer:\nThe bounding box shows a cat.",
            "stop",
            "reveals_source",
        ),
        ("detail", "word " * 2000, "stop", "too_long"),
    ],
)
def test_rejects_name_their_reason(kind, text, finish, reason):
    with pytest.raises(Rejected) as err:
        parse_generation(kind, text, finish, RULES, "Describe.")
    assert err.value.reason == reason and reason in REJECT_REASONS
