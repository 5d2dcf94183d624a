"""The trained toy model has learned: held-out scenes, questions about their shapes, accuracy far above chance.

A toy world with enough short-answer data and a pretrained tiny vision tower goes through the real stages
(pretrain, then finetune through the `deepspeed` launcher); `firellava.toy.heldout` then asks colour, shape, count and
existence questions about fresh scenes. The budget here is about a quarter of the demo's, and at that budget only
colour is learned, so only colour is asserted; shape, count and existence need the demo's budget, its longer-trained
tower and its text-pretrained LLM, which this world leaves out (docs/experiments.md).
"""

from __future__ import annotations

import pytest

from firellava.toy.heldout import heldout_accuracy, named_object_questions
from firellava.toy.stage import build_toy_world
from firellava.train.launch import run_finetune, run_pretrain
from tests.conftest import SMALL_PER_SOURCE, toy_world_spec
from tests.test_train_stages import tiny_cfg

# The session's small world, with the short-answer data that grounds answers in the image.
PER_SOURCE = {**SMALL_PER_SOURCE, "llava_instruct": 8, "vqav2": 600, "gqa": 200}


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("learning")
    world = build_toy_world(
        out / "toy_world",
        toy_world_spec(
            seed=11,
            coco_images=300,
            pretrain_images=48,
            per_source=PER_SOURCE,
            vocab_size=512,
            vision_pretrain={"steps": 1000},
            # Text pretraining would dominate this test's time, and colour is learned without it.
            llm_pretrain={"steps": 0},
            teacher={"steps": 0},
            benchmark_questions=1,
        ),
    )
    cfg = tiny_cfg(
        world,
        out,
        "train.finetune.global_batch_size=16",
        "train.finetune.per_device_batch_size=8",
        "train.finetune.epochs=4",
        "train.finetune.learning_rate=1e-3",
        "train.finetune.packing=false",  # the budget above was measured on padded batches
    )
    run_pretrain(cfg)
    finetune = run_finetune(cfg)
    return finetune, heldout_accuracy(finetune["dir"], n=90, seed=2024)


def test_finetuned_toy_model_answers_held_out_colour_questions_far_above_chance(learned):
    finetune, accuracy = learned
    assert finetune["steps"] >= 200
    assert finetune["final_loss"] < finetune["first_loss"] / 3
    # n=90: one standard error at chance is about 0.04, so 2.5x chance is more than 6 of them.
    assert accuracy["colour"]["accuracy"] >= 2.5 * accuracy["colour"]["chance"], accuracy


def test_named_object_questions_ask_about_two_kinds_with_different_answers():
    pairs = named_object_questions(20, seed=3)
    assert len(pairs) == 20
    for (q1, a1), (q2, a2), image in pairs:
        assert q1 != q2 and a1 != a2 and q1.startswith("What color is the ")
        assert image.mode == "RGB"
    assert named_object_questions(20, seed=3)[0][:2] == pairs[0][:2]  # seeded
