"""The source registry and the classifier that gives every record of a mix665k-format file its source.

LLaVA-1.5's mix carries no source field. A source is recognized by the conditions its registry
entry names, all of which must hold: text-only or not, image path prefixes, how the first human turn ends or
begins (response-format and region prompts), and, where text cannot tell (VQAv2 vs OK-VQA, LLaVA-Instruct vs the
rest of COCO), membership of (image, first question) in the source's own annotation files. Every rule is
evaluated for every record, so a record that two rules claim is counted as ambiguous in the manifest; the
first rule in registry order wins, which keeps the classification deterministic.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firellava.core.chat_format import IMAGE_TOKEN
from firellava.core.io import read_json, sha256_file
from firellava.core.terms import TrainingTerms
from firellava.mix.io import JsonListReader

_IMAGE_NUMBER = re.compile(r"(\d+)\.\w+$")


@dataclass(frozen=True)
class SourceSpec:
    """One registry entry (conf/mix/sources/): what the source is, its license, and how its records are
    recognized."""

    name: str
    license: str
    commercial_use: bool
    text_only: bool = False
    image_prefixes: Sequence[str] = ()
    first_turn_suffixes: Sequence[str] = ()
    first_turn_prefixes: Sequence[str] = ()
    question_files: Sequence[str] = ()  # VQA-format question files: {"questions": [{image_id, question}]}
    reference_json: str | None = (
        None  # a LLaVA-format file whose (image, first question) pairs are the source
    )
    url: str = ""
    note: str = ""
    terms: TrainingTerms | None = None  # a licence term on which models the source's data may train

    def __post_init__(self) -> None:
        for key in ("license", "commercial_use"):
            if getattr(self, key) in (None, ""):
                raise ValueError(f"mix.sources.{self.name}.{key} is required: every source declares it")
        if not isinstance(self.commercial_use, bool):
            raise ValueError(f"mix.sources.{self.name}.commercial_use must be true or false")
        if self.text_only and (self.image_prefixes or self.question_files or self.reference_json):
            raise ValueError(f"mix.sources.{self.name}: a text-only source cannot also match on images")
        if not self.text_only and not self.image_prefixes:
            raise ValueError(
                f"mix.sources.{self.name}: give image_prefixes (or text_only: true); a rule must say where it "
                "applies"
            )


def normalize(text: str) -> str:
    """Question text as compared against annotation files: case and spacing do not count."""
    return " ".join(text.split()).casefold()


def first_human_text(record: Any) -> str | None:
    """The first turn's text without the image token, or None when the record has no readable first turn."""
    conversations = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(conversations, list) or not conversations:
        return None
    turn = conversations[0]
    if not isinstance(turn, dict) or turn.get("from") != "human" or not isinstance(turn.get("value"), str):
        return None
    return turn["value"].replace(IMAGE_TOKEN, "").strip()


def image_number(image: str) -> int | None:
    """COCO image id from a file name (000000033471.jpg, COCO_train2014_000000033471.jpg -> 33471)."""
    m = _IMAGE_NUMBER.search(image)
    return int(m.group(1)) if m else None


def _strip_suffix(text: str, suffixes: Iterable[str]) -> str:
    for suffix in suffixes:
        if text.endswith(suffix):
            return text[: -len(suffix)].strip()
    return text


@dataclass
class ReferenceFile:
    path: Path
    sha256: str
    entries: int


def load_question_file(path: Path) -> tuple[set[tuple[int, str]], ReferenceFile]:
    data = read_json(path)
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise ValueError(f"{path}: expected a VQA question file, an object with a 'questions' list")
    keys = set()
    for i, q in enumerate(questions):
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("image_id"), int)
            or not isinstance(q.get("question"), str)
        ):
            raise ValueError(f"{path}: questions[{i}] needs an integer 'image_id' and a string 'question'")
        keys.add((q["image_id"], normalize(q["question"])))
    return keys, ReferenceFile(path, sha256_file(path), len(questions))


def load_reference_json(path: Path) -> tuple[set[tuple[str, str]], ReferenceFile]:
    reader = JsonListReader(path)
    keys = set()
    count = 0
    for i, record in reader:
        question = first_human_text(record)
        image = record.get("image") if isinstance(record, dict) else None
        if question is None or not isinstance(image, str):
            raise ValueError(f"{path}: record {i} needs an 'image' and a first human turn")
        keys.add((Path(image).name, normalize(question)))
        count += 1
    return keys, ReferenceFile(path, reader.sha256 or "", count)


def _rule(spec: SourceSpec, questions: set, references: set) -> Callable[[str | None, str | None], bool]:
    """A predicate on (image, first human text) for the conditions of `spec` beyond its image prefixes
    (`Classifier` only asks rules whose prefix the image has)."""
    suffixes = tuple(spec.first_turn_suffixes)  # str.endswith takes a tuple, not a list from the config
    starts = tuple(spec.first_turn_prefixes)

    def match(image: str | None, text: str | None) -> bool:
        if text is None:
            return not (suffixes or starts or questions or references)
        if suffixes and not text.endswith(suffixes):
            return False
        if starts and not text.startswith(starts):
            return False
        if questions:
            number = image_number(image)
            if number is None or (number, normalize(_strip_suffix(text, suffixes))) not in questions:
                return False
        return not references or (image.rpartition("/")[2], normalize(text)) in references

    return match


@dataclass
class Classification:
    counts: Counter = field(default_factory=Counter)
    ambiguous: Counter = field(default_factory=Counter)  # "a|b" -> records both rules claimed
    unclassified: list[tuple[int, Any, str]] = field(default_factory=list)  # (index, id, why)


class Classifier:
    """Built once from the registry (reading the annotation files it names); `classify` is per record.

    Rules are looked up by the image's prefix (one regex call), so a record is tested only against the rules
    that apply to its folder: every rule that could claim it, and no others.
    """

    def __init__(self, registry: list[SourceSpec]):
        self.registry = registry
        self.references: list[ReferenceFile] = []
        self._text_only: list[tuple[str, Callable]] = []
        by_prefix: dict[str, list[int]] = {}
        rules = []
        for spec in registry:
            questions: set = set()
            for path in spec.question_files:
                keys, ref = load_question_file(Path(path))
                questions |= keys
                self.references.append(ref)
            references: set = set()
            if spec.reference_json:
                references, ref = load_reference_json(Path(spec.reference_json))
                self.references.append(ref)
            rules.append((spec.name, _rule(spec, questions, references)))
            if spec.text_only:
                self._text_only.append(rules[-1])
            for prefix in spec.image_prefixes:
                by_prefix.setdefault(prefix, []).append(len(rules) - 1)
        # The regex finds the longest matching prefix p; every other prefix the image has is a prefix of p, so
        # the rules to try for p are those of all such prefixes, in registry order.
        self._rules_for = {
            p: [rules[i] for i in sorted({i for q, ids in by_prefix.items() if p.startswith(q) for i in ids})]
            for p in by_prefix
        }
        alternatives = sorted(by_prefix, key=len, reverse=True)
        self._prefix = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        self.result = Classification()

    def _candidates(self, image: str | None) -> list[tuple[str, Callable]]:
        if image is None:
            return self._text_only
        m = self._prefix.match(image) if self._prefix else None
        return self._rules_for[m.group()] if m else []

    def classify(self, index: int, record: Any) -> str | None:
        """The record's source; None (and the record listed as unclassified) when no rule matches."""
        if not isinstance(record, dict):
            self.result.unclassified.append((index, None, "not a JSON object"))
            return None
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            self.result.unclassified.append((index, record.get("id"), "field 'image' is not a string"))
            return None
        candidates = self._candidates(image)
        text = first_human_text(record) if candidates else None
        names = [name for name, match in candidates if match(image, text)]
        if not names:
            why = "no rule matches" if text is not None or not candidates else "no readable first human turn"
            self.result.unclassified.append((index, record.get("id"), why))
            return None
        if len(names) > 1:
            self.result.ambiguous["|".join(names)] += 1
        self.result.counts[names[0]] += 1
        return names[0]
