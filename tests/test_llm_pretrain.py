"""The tiny LLM's text pretraining: examples in the two templates with the scene's words in the image's place,
and a run that changes the model and lowers its loss."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.chat_format import IGNORE_INDEX
from pipeline.toy_world import language as lang
from pipeline.toy_world.llm_pretrain import (
    LlmPretrainSpec,
    _examples,
    chat_example,
    pad_batch,
    plain_example,
    pretrain_llm,
    scene_words,
)
from pipeline.toy_world.scenes import Scene, Shape
from pipeline.toy_world.tiny_models import TinySizes, build_llm

SCENE = Scene(1, 64, 48, (Shape("circle", "red", (1, 1, 14, 14)), Shape("triangle", "blue", (30, 1, 14, 14))))


@pytest.fixture(scope="module")
def tok(toy_world):
    return AutoTokenizer.from_pretrained(toy_world["models"]["tokenizer"])


def supervised_text(tok, ids, labels) -> str:
    return tok.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])


def test_scene_words_name_every_shape_once_in_some_order():
    words = scene_words(SCENE, random.Random(0))
    assert words.startswith(" ")
    assert sorted(words.strip().split()) == sorted(["red", "circle", "blue", "triangle"])
    assert words.strip() in ("red circle blue triangle", "blue triangle red circle")


def test_plain_example_supervises_the_caption_only(tok):
    ids, labels = plain_example(SCENE, random.Random(1), tok)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert ids[0] == tok.bos_token_id
    assert sorted(tok.decode(ids[1:first]).split()) == sorted(["red", "circle", "blue", "triangle"])
    assert all(label != IGNORE_INDEX for label in labels[first:])
    assert supervised_text(tok, ids, labels).endswith("\n")


def test_chat_example_puts_the_words_where_the_image_goes_and_supervises_answers(tok):
    qas = [("Is there a red circle in the image?", "yes"), ("What color is the triangle?", "blue")]
    ids, labels = chat_example(SCENE, random.Random(2), tok, qas)
    text = tok.decode(ids)
    first_turn = text[text.index("USER:") :]
    assert first_turn.split("\n")[0].split(":", 1)[1].split() in (
        ["red", "circle", "blue", "triangle"],
        ["blue", "triangle", "red", "circle"],
    )
    assert lang.SHORT_ANSWER_PROMPT in text and "What color is the triangle?" in text
    answers = supervised_text(tok, ids, labels)
    assert "yes" in answers and "blue" in answers and "circle" not in answers


def test_examples_never_outnumber_what_training_draws(tok):
    spec = LlmPretrainSpec(steps=3, batch_size=4, examples=1000)
    assert len(_examples(spec, tok, seed=0)) == 12


def test_pretraining_changes_the_llm_and_lowers_its_loss(tok):
    llm = build_llm(TinySizes(llm_layers=2), tok, seed=5)
    spec = LlmPretrainSpec(steps=60, batch_size=8, examples=480, learning_rate=3e-3)
    fixed = pad_batch(_examples(LlmPretrainSpec(steps=1, batch_size=16), tok, seed=99), tok.pad_token_id or 0)
    with torch.no_grad():
        before = llm(**fixed).loss.item()
    probe = pretrain_llm(llm, tok, spec, seed=5)
    with torch.no_grad():
        after = llm(**fixed).loss.item()
    assert set(probe) == {"exists", "colour", "shape"} and all(0 <= v <= 1 for v in probe.values())
    assert after < before / 2, (before, after)
