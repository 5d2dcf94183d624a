"""The LLaVA conversation record: the one schema that datagen writes, the mix validates and training reads.

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt", "value": "A red apple."}],
     "source": "firellava_generated", "license": "apache-2.0", "model": "...", "type": "conversation"}

`image` is optional: a record without it is text-only. Other keys are allowed, as LLaVA's own files carry some
(ShareGPT's `model`) and its trainer ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from firellava.core.chat_format import IMAGE_TOKEN

# Our provenance fields: optional, strings when present.
PROVENANCE_FIELDS = ("source", "license", "model", "type")
# What `record_problem` checks, in words, for the data cards.
SCHEMA = (
    "`id`, `image` (relative to the image folder; absent from a text-only record), `conversations` (`from` "
    "human/gpt alternating, starting with human, in pairs, non-empty `value`s; "
    f"`{IMAGE_TOKEN}` exactly once in the first human turn of an image record and never in a text-only one)"
)
_ABSENT = object()


class RecordError(ValueError):
    """A record that breaks the schema; the message names where the record is and the field."""


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a record: the field (None for the record as a whole) and what is wrong."""

    field: str | None
    message: str

    def __str__(self) -> str:
        return f"field {self.field!r}: {self.message}" if self.field else self.message


def record_problem(record: Any) -> Problem | None:
    """The first schema problem of a record, or None when it is a valid LLaVA record.

    Runs on every record of the mix (hundreds of thousands), hence the exact-type checks.
    """
    if type(record) is not dict:
        return Problem(None, f"a record must be a JSON object, got {type(record).__name__}")
    rid = record.get("id")
    if type(rid) is not str and type(rid) is not int:
        return Problem("id", "missing, or not a string or an integer")
    turns = record.get("conversations")
    if type(turns) is not list or not turns:
        return Problem("conversations", "missing or empty (a non-empty list of turns is required)")
    if len(turns) % 2:
        return Problem("conversations", f"{len(turns)} turns, expected human/gpt pairs")
    image = record.get("image", _ABSENT)
    has_image = image is not _ABSENT
    if has_image:
        if type(image) is not str or not image:
            return Problem("image", "not a non-empty string")
        if image.startswith("/") or ".." in image.split("/"):
            return Problem("image", f"{image!r} must be relative to the image folder")
    expected = "human"
    for i, turn in enumerate(turns):
        if type(turn) is not dict:
            return Problem(f"conversations[{i}]", "not an object")
        if turn.get("from") != expected:
            return Problem(f"conversations[{i}].from", f"expected {expected!r}, got {turn.get('from')!r}")
        value = turn.get("value")
        if type(value) is not str or not value or value.isspace():
            return Problem(f"conversations[{i}].value", "missing or empty")
        if IMAGE_TOKEN in value:
            if not has_image:
                return Problem(f"conversations[{i}].value", f"{IMAGE_TOKEN} in a text-only record")
            if i > 0:
                return Problem(f"conversations[{i}].value", f"{IMAGE_TOKEN} outside the first human turn")
            if value.count(IMAGE_TOKEN) != 1:
                n = value.count(IMAGE_TOKEN)
                return Problem(
                    "conversations[0].value", f"{IMAGE_TOKEN} appears {n} times, expected exactly once"
                )
        elif has_image and i == 0:
            return Problem("conversations[0].value", f"{IMAGE_TOKEN} appears 0 times, expected exactly once")
        expected = "gpt" if expected == "human" else "human"
    for key in PROVENANCE_FIELDS:
        value = record.get(key, _ABSENT)
        if value is not _ABSENT and type(value) is not str:
            return Problem(key, f"must be a string, got {type(value).__name__}")
    return None


def check_record(record: Any, where: str) -> None:
    """Raise `RecordError` ('<where>: field ...: problem') unless the record is valid."""
    problem = record_problem(record)
    if problem is not None:
        raise RecordError(f"{where}: {problem}")


def display_id(record: Any, index: int) -> str:
    """The record's id as text, or `#<index>` for a record without one (it is named in an error anyway)."""
    rid = record.get("id") if isinstance(record, Mapping) else None
    return str(rid) if rid is not None else f"#{index}"


def conversation(
    pairs: Sequence[tuple[str, str]], *, image: bool, image_first: bool = True
) -> list[dict[str, str]]:
    """Turns from (question, answer) pairs; with an image, the image token opens (or, `image_first=False`,
    ends) the first question. LLaVA-1.5's trainer moves it to the front either way."""
    turns = []
    for i, (question, answer) in enumerate(pairs):
        if i == 0 and image:
            question = f"{IMAGE_TOKEN}\n{question}" if image_first else f"{question}\n{IMAGE_TOKEN}"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def make_record(
    record_id: str | int, conversations: list[dict[str, str]], *, image: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A checked record with its keys in the usual order: id, image, conversations, then `fields`."""
    record: dict[str, Any] = {"id": record_id}
    if image is not None:
        record["image"] = image
    record["conversations"] = conversations
    record.update(fields)
    check_record(record, f"record {record_id!r}")
    return record
