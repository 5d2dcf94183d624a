"""The record schema: what a valid LLaVA record is, the field each problem names, how records are built."""

from __future__ import annotations

import copy

import pytest

from firellava.core.records import (
    Problem,
    RecordError,
    check_record,
    conversation,
    display_id,
    make_record,
    record_problem,
)

IMAGE = {
    "id": "000000033471",
    "image": "coco/train2017/000000033471.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat is on the table?"},
        {"from": "gpt", "value": "A red apple."},
        {"from": "human", "value": "How many?"},
        {"from": "gpt", "value": "One."},
    ],
}
TEXT = {
    "id": 7,
    "model": "",
    "conversations": [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hi."}],
}


def damaged(record: dict, edit) -> dict:
    out = copy.deepcopy(record)
    edit(out)
    return out


def test_valid_records():
    assert record_problem(IMAGE) is None and record_problem(TEXT) is None
    # The image token may end the first question too (LLaVA-Instruct does that), and other keys are allowed.
    last = damaged(IMAGE, lambda r: r["conversations"][0].update(value="What is on the table?\n<image>"))
    assert record_problem(last) is None
    provenance = {"source": "firellava_generated", "license": "apache-2.0", "model": "m", "type": "detail"}
    assert record_problem({**IMAGE, **provenance, "extra": [1]}) is None


def set_turn(i: int, **fields):
    return lambda r: r["conversations"][i].update(fields)


@pytest.mark.parametrize(
    "record, field, message",
    [
        (["not", "a", "record"], None, "a record must be a JSON object, got list"),
        (damaged(IMAGE, lambda r: r.pop("id")), "id", "missing"),
        (damaged(IMAGE, lambda r: r.update(id=1.5)), "id", "not a string or an integer"),
        (damaged(IMAGE, lambda r: r.update(conversations=[])), "conversations", "missing or empty"),
        (damaged(IMAGE, lambda r: r.pop("conversations")), "conversations", "missing or empty"),
        (
            damaged(IMAGE, lambda r: r["conversations"].pop()),
            "conversations",
            "3 turns, expected human/gpt pairs",
        ),
        (damaged(IMAGE, lambda r: r.update(image="")), "image", "not a non-empty string"),
        (
            damaged(IMAGE, lambda r: r.update(image="/abs/x.jpg")),
            "image",
            "must be relative to the image folder",
        ),
        (damaged(IMAGE, lambda r: r.update(image="a/../../x.jpg")), "image", "must be relative"),
        (
            damaged(IMAGE, lambda r: r["conversations"].__setitem__(2, "How many?")),
            "conversations[2]",
            "not an object",
        ),
        (
            damaged(IMAGE, set_turn(0, **{"from": "gpt"})),
            "conversations[0].from",
            "expected 'human', got 'gpt'",
        ),
        (
            damaged(IMAGE, set_turn(3, **{"from": "robot"})),
            "conversations[3].from",
            "expected 'gpt', got 'robot'",
        ),
        (damaged(IMAGE, set_turn(1, value=" \n")), "conversations[1].value", "missing or empty"),
        (damaged(IMAGE, set_turn(1, value=None)), "conversations[1].value", "missing or empty"),
        (damaged(IMAGE, set_turn(0, value="What?")), "conversations[0].value", "<image> appears 0 times"),
        (
            damaged(IMAGE, set_turn(0, value="<image><image>\nWhat?")),
            "conversations[0].value",
            "appears 2 times",
        ),
        (damaged(IMAGE, set_turn(2, value="<image>\nAgain?")), "conversations[2].value", "outside the first"),
        (damaged(IMAGE, set_turn(1, value="An <image>.")), "conversations[1].value", "outside the first"),
        (damaged(TEXT, set_turn(0, value="<image>\nHi?")), "conversations[0].value", "in a text-only record"),
        (damaged(TEXT, lambda r: r.update(license=None)), "license", "must be a string, got NoneType"),
    ],
)
def test_each_problem_names_its_field(record, field, message):
    problem = record_problem(record)
    assert isinstance(problem, Problem) and problem.field == field and message in problem.message
    with pytest.raises(RecordError) as err:
        check_record(record, "data.json: record 3")
    prefix = f"data.json: record 3: field {field!r}: " if field else "data.json: record 3: "
    assert str(err.value).startswith(prefix) and message in str(err.value)


def test_display_id():
    assert display_id(IMAGE, 4) == "000000033471" and display_id(TEXT, 0) == "7"
    assert display_id({"conversations": []}, 4) == "#4" and display_id("not a record", 9) == "#9"


def test_conversation_and_make_record():
    turns = conversation([("Q1", "A1"), ("Q2", "A2")], image=True)
    assert turns[0] == {"from": "human", "value": "<image>\nQ1"} and turns[2]["value"] == "Q2"
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert conversation([("Q1", "A1")], image=True, image_first=False)[0]["value"] == "Q1\n<image>"
    assert conversation([("Q1", "A1")], image=False)[0]["value"] == "Q1"

    record = make_record("r1", turns, image="a.jpg", source="s", license="l")
    assert list(record) == ["id", "image", "conversations", "source", "license"]
    assert "image" not in make_record(2, conversation([("Q", "A")], image=False))
    with pytest.raises(
        RecordError, match=r"record 'r2': field 'conversations\[0\]\.value': <image> in a text-only"
    ):
        make_record("r2", turns)
