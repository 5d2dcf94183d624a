"""The grounding check and near-duplicate removal of generated conversations: true toy answers pass, planted
hallucinations and wrong counts are caught and counted, the word rules behave as documented, and near-duplicates
are found with MinHash LSH."""

from __future__ import annotations

import random

import pytest

from firellava.core.neardup import NearDupIndex, NearDupSpec
from firellava.datagen import synonyms
from firellava.datagen.contexts import TYPES, Instance, load_contexts
from firellava.datagen.grounding import (
    GroundingCheck,
    GroundingSpec,
    GroundingTally,
    Lexicon,
    check_answers,
    mentions,
    truth_of,
)
from firellava.datagen.outputs import Provenance, _grounding_lines, build_records
from firellava.datagen.parse import ParseRules
from firellava.datagen.prompts import format_response
from firellava.toy import language
from firellava.toy.scenes import SHAPES, sample_scene

COCO = Lexicon(synonyms.SYNONYMS)  # the 80 COCO categories
TOY = Lexicon(SHAPES)


def grounded(text, counts, captions=(), crowd=()):
    instances = [Instance(c, (0, 0, 1, 1)) for c, n in counts.items() for _ in range(n)]
    instances += [Instance(c, (0, 0, 1, 1), crowd=True) for c in crowd]
    return check_answers([text], truth_of(instances, captions, COCO), COCO)


def test_true_toy_answers_and_captions_pass():
    """The toy world's texts are true by construction: in 600 scenes no mention or count is flagged."""
    rng = random.Random(0)
    checked = claims = 0
    for n in range(600):
        scene = sample_scene(rng, n)
        instances = [Instance(s.kind, s.box) for s in scene.shapes]
        captions = language.captions(scene, rng)
        answers = [a for _, a in language.conversation(scene, rng)]
        answers += [language.detailed_description(scene, rng)[1], language.complex_reasoning(scene, rng)[1]]
        for text in [*answers, *captions]:
            g = check_answers([text], truth_of(instances, [], TOY), TOY)
            assert not g.hallucinated and not g.count_mismatches, text
            checked += len(g.mentioned)
            claims += g.count_claims
    assert checked > 1000 and claims > 100  # the check did look at mentions and counts


@pytest.fixture(scope="module")
def coco(toy_world):
    return load_contexts(toy_world["coco_instances"], toy_world["coco_captions"])


def planted(coco):
    """An image of the toy COCO files lacking some shape, with a clean record, one naming the missing shape, and
    one stating a wrong count."""
    ctx = next(c for c in coco.contexts.values() if len({i.category for i in c.instances}) < len(SHAPES))
    present = ctx.instances[0].category
    n = sum(i.category == present for i in ctx.instances)
    absent = next(s for s in SHAPES if all(i.category != s for i in ctx.instances))
    verb, noun = ("is", present) if n == 1 else ("are", present + "s")
    words = language.COUNT_WORDS
    wrong = "three" if n != 3 else "two"
    texts = {
        "clean": [
            ("How many?", f"There {verb} {words[n]} {noun} in the picture. There is no {absent} here.")
        ],
        "hallucination": [("What is there?", f"A red {absent} is next to the {present}.")],
        "count_mismatch": [("How many?", f"There are {wrong} {present}s in the picture.")],
    }
    return ctx, absent, texts


def test_planted_hallucination_and_wrong_count_are_caught(coco):
    ctx, absent, texts = planted(coco)
    check = GroundingCheck(GroundingSpec(), coco.contexts, coco.categories)
    assert set(coco.categories) == set(SHAPES)
    verdicts = {
        name: check.verdict(check.check(ctx.image_id, [a for _, a in qa])) for name, qa in texts.items()
    }
    assert verdicts["clean"] is None
    assert verdicts["hallucination"][0] == "hallucination" and f"'{absent}'" in verdicts["hallucination"][1]
    assert verdicts["count_mismatch"][0] == "count_mismatch" and "annotated" in verdicts["count_mismatch"][1]
    # The threshold decides: one hallucinated of two mentioned is a rate of 0.5.
    lenient = GroundingCheck(GroundingSpec(max_hallucination_rate=0.5), coco.contexts, coco.categories)
    assert lenient.verdict(lenient.check(ctx.image_id, [texts["hallucination"][0][1]])) is None


def test_rejects_are_counted_with_rates_and_examples(coco):
    ctx, absent, texts = planted(coco)
    rows = [
        {
            "id": f"conversation-{name}",
            "type": "conversation",
            "image_id": ctx.image_id,
            "text": format_response("conversation", qa),
            "finish_reason": "stop",
        }
        for name, qa in texts.items()
    ]
    check = GroundingCheck(GroundingSpec(examples=5), coco.contexts, coco.categories)
    tally = GroundingTally(TYPES, 5)
    records, rejected = build_records(
        rows, coco.contexts, "coco/train2017", Provenance("t", "l", True), ParseRules(), check, tally
    )
    assert [r["id"] for r in records["conversation"]] == ["conversation-clean"]
    assert {r["id"]: r["reason"] for r in rejected} == {
        "conversation-hallucination": "hallucination",
        "conversation-count_mismatch": "count_mismatch",
    }
    summary = tally.summary()
    conv = summary["per_type"]["conversation"]
    assert conv["records"] == 3 and conv["hallucinated"] == 1 and conv["records_hallucinating"] == 1
    assert conv["chair_s"] == round(1 / 3, 4) and conv["chair_i"] == round(1 / conv["mentions"], 4)
    assert conv["count_mismatches"] == 1 and conv["count_claims"] >= 3
    assert {e["what"] for e in conv["examples"]} == {"not in the image", "wrong count"}
    card = "\n".join(
        _grounding_lines(
            {**summary, **GroundingSpec().__dict__, "categories": 3, "enabled": True},
        )
    )
    assert f'"{absent}" -> {absent} (not in the image)' in card and "| conversation | 3 |" in card


@pytest.mark.parametrize(
    ("text", "counts", "hallucinated", "mismatched"),
    [
        # synonyms, plurals and compounds
        (
            "Two hot dogs lie on the dining table next to a teddy bear.",
            {"hot dog": 2, "dining table": 1, "teddy bear": 1},
            [],
            [],
        ),
        (
            "A man rides a motorbike while talking on his cellphone.",
            {"person": 1, "motorcycle": 1, "cell phone": 1},
            [],
            [],
        ),
        ("The cat sleeps on a sofa in front of the TV.", {"cat": 1, "couch": 1, "tv": 1}, [], []),
        ("A fire hydrant stands by the road; a dog sniffs it.", {"fire hydrant": 1}, ["dog"], []),
        ("A baby elephant walks behind its mother.", {"elephant": 2}, [], []),
        ("He wears an orange shirt.", {"person": 1}, [], []),
        ("People walk past a man-made pond with a two-year-old girl.", {"person": 3}, [], []),
        ("Passengers wait at the bus stop.", {"person": 2}, [], []),
        (
            "The cat sleeps on the laptop keyboard next to a TV remote.",
            {"cat": 1, "laptop": 1, "remote": 1},
            [],
            [],
        ),
        # negation and hedges assert nothing
        ("There is no cat in the room, and the dog isn't near a car.", {"dog": 1}, [], []),
        ("The man might be waiting for a bus.", {"person": 1}, [], []),
        ("There is no dog in the picture.", {"dog": 1}, [], ["no dog"]),
        # counts
        ("Three people and two dogs are on the beach.", {"person": 3, "dog": 2}, [], []),
        ("There are two dogs on the beach.", {"dog": 3}, [], ["two dogs"]),
        ("Two men and a woman walk three dogs.", {"person": 3, "dog": 3}, [], []),
        ("Four women are dancing.", {"person": 3}, [], ["four women"]),
        ("Two brown dogs play; two of the dogs bark.", {"dog": 4}, [], []),
        ("Two of the dogs bark.", {"dog": 1}, [], ["two of the dogs"]),
        ("One of the dogs barks and one dog sleeps.", {"dog": 3}, [], []),
        ("There is one dog.", {"dog": 3}, [], ["one dog"]),
        ("A couple of dogs, a few cats, two other dogs and about 5 cats.", {"dog": 1, "cat": 1}, [], []),
        ("At least 2 cats sit on 3 chairs.", {"cat": 4, "chair": 2}, [], ["3 chairs"]),
    ],
)
def test_coco_word_rules(text, counts, hallucinated, mismatched):
    g = grounded(text, counts)
    assert [m.category for m in g.hallucinated] == hallucinated
    assert [m.phrase for m, _ in g.count_mismatches] == mismatched


def test_captions_and_crowds_are_ground_truth():
    # COCO missed the dog; a reference caption names it: not a hallucination, and its count is unknown.
    g = grounded("Two dogs play with a frisbee.", {"frisbee": 1}, captions=["Two dogs play in a park."])
    assert not g.hallucinated and not g.count_mismatches
    g = grounded("Three people watch.", {"person": 1}, crowd=["person"])
    assert not g.hallucinated and not g.count_mismatches and g.count_claims == 0


def test_mentions_report_phrase_and_assertion():
    got = [
        (m.category, m.phrase, m.asserted, m.count, m.exact) for m in mentions("No, there are no cats.", COCO)
    ]
    assert got == [("cat", "no cats", False, 0, True)]
    got = [
        (m.category, m.phrase, m.count, m.exact) for m in mentions("I see 3 red apples and one banana.", COCO)
    ]
    assert got == [("apple", "3 red apples", 3, False), ("banana", "one banana", 1, False)]


def test_near_duplicates_with_minhash_lsh():
    base = (
        "a man in a red shirt is riding a bicycle down a busy city street next to parked cars while a woman "
        "with a yellow umbrella waits at the corner and two children feed pigeons near the fountain under a "
        "grey sky that promises rain before the evening traffic begins to fill the old market square"
    )
    index = NearDupIndex(NearDupSpec(threshold=0.8))
    assert index.keep_first("a", base) is None
    key, j = index.keep_first("b", base.replace("busy", "quiet", 1))
    assert key == "a" and 0.8 <= j < 1
    assert index.keep_first("c", "two dogs chase a frisbee across a grassy park on a sunny afternoon") is None
    assert set(index.kept) == {"a", "c"}
    with pytest.raises(ValueError, match="threshold must be in"):
        NearDupSpec(threshold=1.0)
    strict = NearDupIndex(NearDupSpec(threshold=0.97))
    strict.keep_first("a", base)
    assert strict.keep_first("b", base.replace("busy", "quiet", 1)) is None


def test_near_duplicate_records_are_rejected(coco):
    ctx = next(iter(coco.contexts.values()))
    shape = ctx.instances[0].category
    answer = (
        f"The {shape} sits on a plain light background and is the only object of its kind that we can see"
    )
    rows = [
        {
            "id": f"detail-{i}",
            "type": "detail",
            "image_id": ctx.image_id,
            "text": answer + end,
            "finish_reason": "stop",
            "question": "Describe the image.",
        }
        for i, end in enumerate(
            [
                ".",
                " here.",
                " in this picture, drawn in one colour on a pale grey canvas with nothing else at all.",
            ]
        )
    ]
    near = {t: NearDupIndex(NearDupSpec()) for t in TYPES}
    records, rejected = build_records(
        rows, coco.contexts, "", Provenance("t", "l", True), ParseRules(), near=near
    )
    assert [r["id"] for r in records["detail"]] == ["detail-0", "detail-2"]
    assert [(r["id"], r["reason"]) for r in rejected] == [("detail-1", "near_duplicate")]
    assert "detail-0" in rejected[0]["detail"]
