"""Grounding check of generated answers against the image's COCO annotations (CHAIR-style).

Every object an answer (gpt turn) names is mapped to a COCO category through `synonyms`; a category the answer
asserts but the image does not have is a hallucination. What the image has: its instance annotations plus the
categories its reference captions name (CHAIR's ground truth: COCO's instance annotations miss some objects the
annotators did not box, and the teacher read those captions). Rates follow CHAIR: each record's mentions are its
distinct categories; CHAIR_i = hallucinated / mentioned, CHAIR_s = whether any is hallucinated.

Rules (docs/DESIGN.md, datagen):
- Not assertions: a mention after a negation or hedge in its clause ("there is no dog", "without a car", "if a
  cat were added", "he might be waiting for a bus"). Clauses end at punctuation and at but/while/although.
- A noun directly followed by another category noun is a modifier ("baby elephant", "dog bed" name one object).
- Hyphenated words match only as listed ("hot-dog"); "man-made" and "two-year-old" name nothing and count nothing.
- Counts: a number word or digit before the noun. "two dogs" states exactly two dogs. A lower bound only: with
  modifiers ("two brown dogs" are some of the dogs), with a kind word ("two men"), partitive ("two of the dogs"),
  "at least". "one" is exact only after an existence verb ("there is one dog", "shows one dog"); elsewhere ("one
  man holds", "one of the") it only says the category is present. "no dogs" states zero (without modifiers and
  with a whole-category word). No count is read from "a", "a couple of", "a few", "several", "both", "about/
  around/over/more than N", or with "other/more/another" between the number and the noun. Counts are checked
  against the category's instance count; a category with a crowd annotation has no exact count and is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from firellava.core.chair import TOTALS, chair_rates
from firellava.datagen import synonyms as syn


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


NUMBERS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty"
        )
    )
} | {"no": 0}
NEGATION = frozenset(_words("no not never without nor neither none absent missing lacks lacking lack"))
HEDGES = frozenset(
    _words(
        "if would could might may maybe perhaps possibly probably likely unless whether imagine suppose adding add "
        "should"
    )
)
EXISTENCE = frozenset(
    _words("contains contain shows show has have includes include features feature see only")
)
# Between a number and its noun these end the noun phrase: the number counts something else ("two slices of
# pizza", "three years old", "two of the dogs" is handled as partitive).
BREAKS = frozenset(
    _words(
        "the a an this that these those of and or with in on at to for by from is are was were be been being has "
        "have had there it its their his her some any each every all both few several many much which who whose than "
        "as like near next behind under over above below into onto around about couple "
        "year years month months day days hour hours minute minutes second seconds time times inch inches foot feet "
        "meter meters mile miles percent degree degrees kind kinds type types pair pairs piece pieces slice slices "
        "set sets group groups row rows bunch bunches"
    )
)
NOT_A_COUNT = frozenset(_words("other others more another additional remaining extra different same"))
VAGUE_BEFORE_NUMBER = frozenset(
    _words("about around approximately nearly roughly almost over under than to up")
)
DETERMINERS = frozenset(_words("the these those his her their its our my your"))
MAX_MODIFIERS = 3
_TOKEN = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")
_CLAUSE = re.compile(r"[.,;:!?()\"\n]+|\b(?:but|while|whereas|although|though|however)\b")


def plural(word: str) -> str:
    if word in syn.IRREGULAR_PLURALS:
        return syn.IRREGULAR_PLURALS[word]
    if word.endswith("man"):
        return word[:-3] + "men"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class Entry:
    category: str | None  # None: a phrase that names no object (`synonyms.NOT_OBJECTS`)
    whole: bool  # names the whole category, so a count with it is exact


class Lexicon:
    """Phrases (as token tuples, singular and plural, spaced and hyphenated) -> category, for the categories of
    one annotation file: each category's own name plus the table's words for it."""

    def __init__(self, categories: Iterable[str]) -> None:
        self.categories = tuple(categories)
        self.phrases: dict[tuple[str, ...], Entry] = {}
        for phrase in syn.NOT_OBJECTS:
            self._add(phrase, Entry(None, False))
        # First added wins: a category's own name over another's synonym, a synonym over a kind word.
        for cat in self.categories:
            self._add(cat, Entry(cat, True))
        for cat in self.categories:
            for phrase in syn.SYNONYMS.get(cat, ()):
                self._add(phrase, Entry(cat, True))
        for cat in self.categories:
            for phrase in syn.KINDS.get(cat, ()):
                self._add(phrase, Entry(cat, False))
        self.longest = max((len(k) for k in self.phrases), default=1)
        self.first_words = {k[0] for k in self.phrases}

    def _add(self, phrase: str, entry: Entry) -> None:
        words = phrase.lower().split()
        for form in (words, [*words[:-1], plural(words[-1])]):
            for key in (tuple(form), ("-".join(form),)):
                self.phrases.setdefault(key, entry)


@dataclass(frozen=True)
class Mention:
    category: str
    phrase: str  # the words as written, with a stated number: "three dogs"
    clause: str
    asserted: bool  # False after a negation or hedge: the text does not say the object is there
    count: int | None = None  # the number stated for it
    exact: bool = False  # the count is exact (else a lower bound)


def _count(tokens: Sequence[str], start: int, entry: Entry) -> tuple[int | None, bool, int]:
    """(stated count, exact, index where the noun phrase starts) for the noun at tokens[start]."""
    j, modifiers = start - 1, 0
    while j >= 0 and tokens[j] not in NUMBERS and not tokens[j].isdigit() and modifiers < MAX_MODIFIERS:
        if tokens[j] in BREAKS or tokens[j] in NOT_A_COUNT:
            break
        j, modifiers = j - 1, modifiers + 1
    partitive = False
    if j >= 2 and tokens[j] in DETERMINERS and tokens[j - 1] == "of":
        j, partitive = j - 2, True
    if j < 0 or not (tokens[j] in NUMBERS or (tokens[j].isdigit() and int(tokens[j]) <= 100)):
        return None, False, start
    if any(t in NOT_A_COUNT for t in tokens[j + 1 : start]):
        return None, False, start
    n = NUMBERS[tokens[j]] if tokens[j] in NUMBERS else int(tokens[j])
    before = tokens[j - 1] if j else ""
    if before in VAGUE_BEFORE_NUMBER or before in ("a", "couple", "few"):
        return None, False, start
    at_least = j >= 2 and tokens[j - 2 : j] == ["at", "least"]
    if n == 0 and (partitive or modifiers or not entry.whole):
        return None, False, start
    exact = entry.whole and not modifiers and not partitive and not at_least
    if n == 1 and exact:
        existence = before in EXISTENCE or (
            before in ("is", "are", "was") and j >= 2 and tokens[j - 2] == "there"
        )
        exact = existence or before == "there's"
    return n, exact, j


def mentions(text: str, lexicon: Lexicon) -> list[Mention]:
    """Every category mention in `text`, in order, with whether it is asserted and the count it states."""
    out: list[Mention] = []
    for clause in _CLAUSE.split(text.lower()):
        tokens = _TOKEN.findall(clause.replace("’", "'"))
        found: list[tuple[int, int, Entry]] = []
        i = 0
        while i < len(tokens):
            if tokens[i] not in lexicon.first_words:
                i += 1
                continue
            for n in range(min(lexicon.longest, len(tokens) - i), 0, -1):
                entry = lexicon.phrases.get(tuple(tokens[i : i + n]))
                if entry is None:
                    continue
                nxt = tokens[i + n] if i + n < len(tokens) else None
                if n == 1 and tokens[i] in syn.ADJECTIVE_TOO and nxt is not None and nxt not in BREAKS:
                    continue
                found.append((i, i + n, entry))
                i += n - 1
                break
            i += 1
        for k, (s, e, entry) in enumerate(found):
            if entry.category is None:
                continue
            if k + 1 < len(found) and found[k + 1][0] == e and found[k + 1][2].category is not None:
                continue  # a modifier of the next noun
            cues = set(tokens[:s])
            negated = any(t in NEGATION or t.endswith("n't") for t in cues)
            asserted = not negated and not (cues & HEDGES)
            count, exact, first = _count(tokens, s, entry)
            if count == 0:
                asserted = False
            elif not asserted:
                count = None  # a number under a negation or hedge states nothing about the image
            out.append(
                Mention(entry.category, " ".join(tokens[first:e]), clause.strip(), asserted, count, exact)
            )
    return out


@dataclass(frozen=True)
class Truth:
    """What one image has: instance counts per category, categories with a crowd annotation, and categories its
    reference captions name."""

    counts: Mapping[str, int]
    crowd: frozenset[str] = frozenset()
    captioned: frozenset[str] = frozenset()

    def present(self, category: str) -> bool:
        return category in self.counts or category in self.crowd or category in self.captioned


@dataclass
class Grounding:
    mentioned: set[str] = field(default_factory=set)
    hallucinated: list[Mention] = field(default_factory=list)  # first mention of each hallucinated category
    count_claims: int = 0
    count_mismatches: list[tuple[Mention, int]] = field(default_factory=list)  # (claim, annotated count)

    @property
    def rate(self) -> float:
        return len(self.hallucinated) / len(self.mentioned) if self.mentioned else 0.0


def truth_of(instances: Iterable, captions: Iterable[str], lexicon: Lexicon) -> Truth:
    """`instances` have `.category` and `.crowd` (datagen.contexts.Instance)."""
    counts: dict[str, int] = {}
    crowd: set[str] = set()
    for inst in instances:
        if inst.crowd:
            crowd.add(inst.category)
        else:
            counts[inst.category] = counts.get(inst.category, 0) + 1
    captioned = {m.category for c in captions for m in mentions(c, lexicon) if m.asserted}
    return Truth(counts, frozenset(crowd), frozenset(captioned))


def check_answers(answers: Iterable[str], truth: Truth, lexicon: Lexicon) -> Grounding:
    g = Grounding()
    hallucinated: set[str] = set()
    for answer in answers:
        for m in mentions(answer, lexicon):
            if m.asserted:
                g.mentioned.add(m.category)
                if not truth.present(m.category) and m.category not in hallucinated:
                    hallucinated.add(m.category)
                    g.hallucinated.append(m)
            if m.count is None or m.category in truth.crowd:
                continue
            if m.count and not truth.present(m.category):
                continue  # a hallucination already; not also a count mismatch
            if m.category not in truth.counts and m.category in truth.captioned:
                if m.count == 0:
                    g.count_claims += 1
                    g.count_mismatches.append((m, 0))
                continue  # captions name it but nobody boxed it: its count is unknown
            g.count_claims += 1
            have = truth.counts.get(m.category, 0)
            if (m.exact and have != m.count) or (not m.exact and have < m.count):
                g.count_mismatches.append((m, have))
    return g


@dataclass(frozen=True)
class GroundingSpec:
    """`data_gen.grounding`: a record whose answers' CHAIR_i exceeds `max_hallucination_rate`, or that states
    more than `max_count_mismatches` wrong counts, is rejected (reasons `hallucination`, `count_mismatch`)."""

    enabled: bool = True
    max_hallucination_rate: float = 0.2
    max_count_mismatches: int = 0
    examples: int = 3  # caught mentions per type shown in stats.json and the data card

    def __post_init__(self) -> None:
        if not 0 <= self.max_hallucination_rate <= 1:
            raise ValueError(
                f"data_gen.grounding.max_hallucination_rate must be in [0, 1], got {self.max_hallucination_rate}"
            )


class GroundingCheck:
    """One annotation file's lexicon and per-image ground truth; `check` grounds one record's answers."""

    def __init__(self, spec: GroundingSpec, contexts: Mapping[int, Any], categories: Iterable[str]) -> None:
        self.spec = spec
        self.contexts = contexts
        self.lexicon = Lexicon(categories)
        self._truths: dict[int, Truth] = {}

    def truth(self, image_id: int) -> Truth:
        if image_id not in self._truths:
            ctx = self.contexts[image_id]
            self._truths[image_id] = truth_of(ctx.instances, ctx.captions, self.lexicon)
        return self._truths[image_id]

    def check(self, image_id: int, answers: Iterable[str]) -> Grounding:
        return check_answers(answers, self.truth(image_id), self.lexicon)

    def verdict(self, g: Grounding) -> tuple[str, str] | None:
        """(reject reason, detail) or None when the record passes."""
        if g.rate > self.spec.max_hallucination_rate:
            named = ", ".join(f"{m.phrase!r} ({m.category})" for m in g.hallucinated)
            return (
                "hallucination",
                f"{len(g.hallucinated)}/{len(g.mentioned)} mentioned objects not in the image: {named}",
            )
        if len(g.count_mismatches) > self.spec.max_count_mismatches:
            named = ", ".join(f"{m.phrase!r} (annotated {have})" for m, have in g.count_mismatches)
            return "count_mismatch", f"stated counts differ from the annotations: {named}"
        return None


class GroundingTally:
    """Per-type totals over every checked record (kept or rejected), for stats.json and the data card."""

    def __init__(self, types: Sequence[str], examples: int) -> None:
        self.totals = {t: dict.fromkeys(TOTALS, 0) for t in types}
        self.examples: dict[str, list[dict[str, Any]]] = {t: [] for t in types}
        self.limit = examples

    def add(self, kind: str, record_id: str, g: Grounding) -> None:
        t = self.totals[kind]
        t["records"] += 1
        t["mentions"] += len(g.mentioned)
        t["hallucinated"] += len(g.hallucinated)
        t["records_hallucinating"] += bool(g.hallucinated)
        t["count_claims"] += g.count_claims
        t["count_mismatches"] += len(g.count_mismatches)
        caught = [(m, "not in the image", None) for m in g.hallucinated]
        caught += [(m, "wrong count", have) for m, have in g.count_mismatches]
        for m, what, have in caught:
            if len(self.examples[kind]) < self.limit:
                example = {"id": record_id, "what": what, "phrase": m.phrase, "category": m.category}
                example |= {"annotated": have} if have is not None else {}
                self.examples[kind].append(example | {"clause": m.clause})

    def summary(self) -> dict[str, Any]:
        overall = {k: sum(t[k] for t in self.totals.values()) for k in TOTALS}
        return {
            "overall": chair_rates(overall),
            "per_type": {
                kind: chair_rates(t) | {"examples": self.examples[kind]} for kind, t in self.totals.items()
            },
        }
