"""Text about toy scenes: captions, short-answer questions, region prompts, free-form conversations.

Everything here is derived from a `Scene`, so it is true by construction: a model that learns the text learns
the world (colours, shapes, counts, positions, words). The question generators are public because
`firellava.toy.benchmarks` and `firellava.toy.heldout` reuse them to ask questions about fresh scenes. A generator returns None
when a scene cannot support an unambiguous question of its kind (e.g. "the circle" when there are two
circles); callers try another.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from firellava.core.instructions import (
    DETAIL_INSTRUCTIONS,
    REGION_BOX_PROMPT,
    REGION_DESCRIPTION_PROMPT,
)
from firellava.toy.scenes import COLOURS, SHAPES, WORDS, Box, Scene, Shape

QA = tuple[str, str]
QAGenerator = Callable[[Scene, random.Random], "QA | None"]

COUNT_WORDS = ("no", "one", "two", "three", "four")
FRUITS = {
    "red": "apple",
    "green": "lime",
    "blue": "blueberry",
    "yellow": "banana",
    "purple": "grape",
    "orange": "orange",
}
TRAFFIC_LIGHT = {"red": "stop", "green": "go", "yellow": "slow down"}
SIDES = {"square": 4, "triangle": 3}


# --- small phrases ------------------------------------------------------------------------------------------


def a(noun_phrase: str) -> str:
    return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + "s"


def join(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def phrase(shape: Shape) -> str:
    return f"{shape.colour} {shape.kind}"


def centre(box: Box) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def position(scene: Scene, box: Box) -> str:
    """Where a box sits in the frame, by thirds: 'in the top left corner', 'on the left', 'in the center'."""
    cx, cy = centre(box)
    col = "left" if cx < scene.width / 3 else "right" if cx > 2 * scene.width / 3 else ""
    row = "top" if cy < scene.height / 3 else "bottom" if cy > 2 * scene.height / 3 else ""
    if col and row:
        return f"in the {row} {col} corner"
    if col:
        return f"on the {col}"
    if row:
        return f"at the {row}"
    return "in the center"


def gaps(a_box: Box, b_box: Box) -> tuple[int, int]:
    """Signed horizontal and vertical gaps from a to b (positive: b lies right of / below a)."""
    ax, ay, aw, ah = a_box
    bx, by, bw, bh = b_box
    dx = bx - (ax + aw) if bx >= ax + aw else -(ax - (bx + bw)) if ax >= bx + bw else 0
    dy = by - (ay + ah) if by >= ay + ah else -(ay - (by + bh)) if ay >= by + bh else 0
    return dx, dy


def relation(a_box: Box, b_box: Box) -> str:
    """How a relates to b along the axis on which they are most clearly apart (boxes never overlap)."""
    dx, dy = gaps(a_box, b_box)
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def shape_list(shapes: Sequence[Shape]) -> str:
    return join([a(phrase(s)) for s in shapes])


def left_to_right(shapes: Sequence[Shape]) -> list[Shape]:
    return sorted(shapes, key=lambda s: (centre(s.box), s.kind, s.colour))


def referring_phrase(scene: Scene, shape: Shape) -> str | None:
    """A phrase naming exactly this shape in its scene, RefCOCO style ('red circle', 'left red circle')."""
    same = [s for s in scene.shapes if phrase(s) == phrase(shape)]
    if len(same) == 1:
        return phrase(shape)
    xs = [centre(s.box)[0] for s in same]
    ys = [centre(s.box)[1] for s in same]

    def spread(values: list[float]) -> float:
        ordered = sorted(values)
        return min(b - a for a, b in zip(ordered, ordered[1:]))

    # Qualify along the axis on which the look-alikes are furthest apart, so "left"/"top" is obvious.
    if max(spread(xs), spread(ys)) <= 0:
        return None
    if spread(xs) >= spread(ys):
        words, order = ("left", "right") if len(same) == 2 else ("left", "middle", "right"), xs
    else:
        words, order = ("top", "bottom") if len(same) == 2 else ("top", "middle", "bottom"), ys
    rank = sorted(order).index(order[same.index(shape)])
    return f"{words[rank]} {phrase(shape)}"


def the_kind(scene: Scene, shape: Shape) -> str | None:
    """The shortest unambiguous name: 'circle' if it is the only circle, else its referring phrase."""
    if sum(s.kind == shape.kind for s in scene.shapes) == 1:
        return shape.kind
    return referring_phrase(scene, shape)


def square_box(scene: Scene, box: Box) -> tuple[float, float, float, float]:
    """[x1, y1, x2, y2] normalized to the image padded to a square (LLaVA's expand2square), 2 decimals.

    LLaVA issue #606: mix665k's grounding boxes are relative to the padded square, not the raw image (a community
    finding, not documented officially).
    """
    side = max(scene.width, scene.height)
    ox, oy = (side - scene.width) // 2, (side - scene.height) // 2
    x, y, w, h = box
    x1, y1, x2, y2 = (round(v / side, 2) for v in (x + ox, y + oy, x + ox + w, y + oy + h))
    return x1, y1, x2, y2


def format_box(box: Sequence[float]) -> str:
    """Python float repr, as the real data shows ('[0.21, 0.92, 0.36, 1.0]')."""
    return "[" + ", ".join(str(v) for v in box) + "]"


# --- captions -----------------------------------------------------------------------------------------------


def _caption_pool(scene: Scene) -> list[str]:
    shapes = list(scene.shapes)
    n = len(shapes)
    ordered = left_to_right(shapes)
    listed = shape_list(ordered)
    kind_counts = [(k, sum(s.kind == k for s in shapes)) for k in SHAPES]
    counted = [f"{COUNT_WORDS[c]} {plural(k, c)}" for k, c in kind_counts if c]
    colours = [c for c in COLOURS if any(s.colour == c for s in shapes)]
    pool = [
        f"{cap(COUNT_WORDS[n])} {plural('shape', n)} on a light background: {listed}.",
        f"A picture of {listed}.",
        f"A simple drawing with {join(counted)}.",
        f"{cap(COUNT_WORDS[n])} {plural('shape', n)} in {join(colours)}.",
        "There is " + join([f"{a(phrase(s))} {position(scene, s.box)}" for s in ordered]) + ".",
    ]
    if n == 1:
        pool.append(f"{cap(a(phrase(shapes[0])))} {position(scene, shapes[0].box)}.")
    else:
        first, second = ordered[0], ordered[1]
        text = f"{cap(a(phrase(first)))} {relation(first.box, second.box)} {a(phrase(second))}"
        if n == 3:
            third = ordered[2]
            text += f", and {a(phrase(third))} {relation(third.box, second.box)} the {phrase(second)}"
        pool.append(text + ".")
    if len({centre(s.box)[0] for s in shapes}) == n and n > 1:
        pool.append(f"From left to right, the image shows {listed}.")
    if scene.word is not None and scene.word_box is not None:
        near = min(shapes, key=lambda s: sum(map(abs, gaps(scene.word_box, s.box))))  # type: ignore[arg-type]
        word = f'the word "{scene.word}"'
        pool = [
            f"{cap(word)} written in black {relation(scene.word_box, near.box)} {a(phrase(near))}.",
            f"A picture of {listed}, together with {word}.",
            f'A sign reading "{scene.word}" {position(scene, scene.word_box)}, with {listed}.',
        ] + pool
    return list(dict.fromkeys(pool))  # dedupe, keep order


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Exactly five distinct, true captions in random order, like COCO's five annotators."""
    pool = _caption_pool(scene)
    if len(pool) < 5:
        raise RuntimeError(f"only {len(pool)} distinct captions for scene {scene.image_id}")
    if scene.word is not None:
        # Keep the word in most captions so text reading is learnable from captions too.
        return rng.sample(pool[:3], 3) + rng.sample(pool[3:], 2)
    return rng.sample(pool, 5)


def brief_caption(scene: Scene, rng: random.Random) -> str:
    """A short lowercase caption without final period, in the style of BLIP captions in LCS-558K."""
    ordered = left_to_right(scene.shapes)
    options = [shape_list(ordered), f"{len(ordered)} {plural('shape', len(ordered))}: {shape_list(ordered)}"]
    if len(ordered) > 1:
        first, second = ordered[0], ordered[1]
        options.append(f"{a(phrase(first))} {relation(first.box, second.box)} {a(phrase(second))}")
    if scene.word is not None:
        options = [f"a sign that says {scene.word.lower()} with {shape_list(ordered)}"] * 2 + options
    return rng.choice(options)


def kind_first_caption(scene: Scene) -> str:
    """Each shape's kind, then its colour, left to right ("circle red, square blue"). Written right after the kind,
    the colour is predicted at the kind's own position: brief captions train the lookup from a colour to its shape
    that way ("red" -> "circle"), and this trains the one from a kind to its colour (docs/experiments.md)."""
    return ", ".join(f"{s.kind} {s.colour}" for s in left_to_right(scene.shapes))


def textcaps_caption(scene: Scene, rng: random.Random) -> str:
    """One sentence that mentions the written word, as TextCaps captions do."""
    if scene.word is None or scene.word_box is None:
        return cap(brief_caption(scene, rng)) + "."
    near = rng.choice(scene.shapes)
    rel = relation(scene.word_box, near.box)
    return rng.choice(
        [
            f'A sign that says "{scene.word}" {rel} {a(phrase(near))}.',
            f'The word "{scene.word}" is written {rel} {a(phrase(near))}.',
            f'Black letters spelling "{scene.word}" next to {shape_list(left_to_right(scene.shapes))}.',
        ]
    )


# --- short-answer questions (VQAv2, GQA, OKVQA, OCR-VQA styles) ---------------------------------------------


def _colour_question(shape: Shape, rng: random.Random) -> QA:
    q = rng.choice(
        ["What color is the {k}?", "What is the color of the {k}?", "Which color does the {k} have?"]
    )
    return q.format(k=shape.kind), shape.colour


def _only_of_their_kind(scene: Scene) -> list[Shape]:
    """The shapes a colour question can name by kind alone."""
    return [s for s in scene.shapes if sum(o.kind == s.kind for o in scene.shapes) == 1]


def colour_qa(scene: Scene, rng: random.Random) -> QA | None:
    targets = _only_of_their_kind(scene)
    if not targets:
        return None
    return _colour_question(rng.choice(targets), rng)


def colour_bound_qa(scene: Scene, rng: random.Random) -> QA | None:
    """`colour_qa` about a shape beside another of a different colour: naming any colour of the scene is no longer
    enough, only the colour of the kind named is. None where the scene has no such shape."""
    targets = [s for s in _only_of_their_kind(scene) if any(o.colour != s.colour for o in scene.shapes)]
    if not targets:
        return None
    return _colour_question(rng.choice(targets), rng)


def shape_qa(scene: Scene, rng: random.Random) -> QA | None:
    targets = [s for s in scene.shapes if sum(o.colour == s.colour for o in scene.shapes) == 1]
    if not targets:
        return None
    s = rng.choice(targets)
    q = rng.choice(["What shape is {c}?", "What is the shape of the {c} object?", "Which shape is {c}?"])
    return q.format(c=s.colour), s.kind


def count_qa(scene: Scene, rng: random.Random) -> QA:
    q = rng.choice(
        [
            "How many shapes are there?",
            "How many shapes are in the image?",
            "How many objects are in the picture?",
        ]
    )
    return q, str(len(scene.shapes))


def count_kind_qa(scene: Scene, rng: random.Random) -> QA:
    if rng.random() < 0.5:
        kind = rng.choice(SHAPES)
        return f"How many {kind}s are there?", str(sum(s.kind == kind for s in scene.shapes))
    colour = rng.choice([s.colour for s in scene.shapes] + [rng.choice(tuple(COLOURS))])
    return f"How many {colour} shapes are there?", str(sum(s.colour == colour for s in scene.shapes))


def _exists_question(colour: str, kind: str, rng: random.Random) -> str:
    q = rng.choice(["Is there a {p} in the image?", "Do you see a {p}?", "Is there any {p} in the picture?"])
    return q.format(p=f"{colour} {kind}")


def exists_qa(scene: Scene, rng: random.Random) -> QA:
    """Yes and no in equal measure, so that 'yes' is never a free answer."""
    present = [(s.colour, s.kind) for s in scene.shapes]
    if rng.random() < 0.5:
        colour, kind = rng.choice(present)
        answer = "yes"
    else:
        absent = [(c, k) for c in COLOURS for k in SHAPES if (c, k) not in present]
        colour, kind = rng.choice(absent)
        answer = "no"
    return _exists_question(colour, kind, rng), answer


def exists_bound_qa(scene: Scene, rng: random.Random) -> QA | None:
    """`exists_qa` whose "no" names a colour and a kind that are both in the scene, on different shapes ("a red
    circle" beside a red square and a blue circle): only a match of both words on one shape answers it. None where
    the scene has no such pair."""
    present = {(s.colour, s.kind) for s in scene.shapes}
    unbound = sorted({(s.colour, o.kind) for s in scene.shapes for o in scene.shapes} - present)
    if not unbound:
        return None
    colour, kind = rng.choice(sorted(present)) if rng.random() < 0.5 else rng.choice(unbound)
    answer = "yes" if (colour, kind) in present else "no"
    return _exists_question(colour, kind, rng), answer


def text_qa(scene: Scene, rng: random.Random) -> QA | None:
    """Read the word; answers are lowercase like TextVQA's normalized answers."""
    if scene.word is None:
        return None
    q = rng.choice(
        ["What word is written in the image?", "What does the text say?", "What is written on the sign?"]
    )
    return q, scene.word.lower()


def ocr_title_qa(scene: Scene, rng: random.Random) -> QA | None:
    if scene.word is None:
        return None
    q = rng.choice(["What is the title of this book?", "What word is printed on the cover?"])
    return q, scene.word.lower()


def ocr_title_check_qa(scene: Scene, rng: random.Random) -> QA | None:
    if scene.word is None:
        return None
    asked = scene.word if rng.random() < 0.5 else rng.choice([w for w in WORDS if w != scene.word])
    return f'Is the title of this book "{asked.lower()}"?', "yes" if asked == scene.word else "no"


def relation_qa(scene: Scene, rng: random.Random) -> QA | None:
    """GQA-style spatial comparison between two shapes, asked along an axis where they are apart."""
    named = [(s, the_kind(scene, s)) for s in scene.shapes]
    named = [(s, n) for s, n in named if n is not None]
    if len(named) < 2:
        return None
    (sa, na), (sb, nb) = rng.sample(named, 2)
    dx, dy = gaps(sa.box, sb.box)
    if dx and (not dy or rng.random() < 0.5):
        return f"Is the {na} to the left or to the right of the {nb}?", "left" if dx > 0 else "right"
    return f"Is the {na} above or below the {nb}?", "above" if dy > 0 else "below"


def relative_shape_qa(scene: Scene, rng: random.Random) -> QA | None:
    """'What shape is to the left of the square?', asked only when exactly one shape fits."""
    options = []
    for anchor in scene.shapes:
        name = the_kind(scene, anchor)
        if name is None:
            continue
        for rel in ("to the left of", "to the right of", "above", "below"):
            fits = [s for s in scene.shapes if s is not anchor and relation(s.box, anchor.box) == rel]
            if len(fits) == 1:
                options.append((anchor, name, rel, fits[0]))
    if not options:
        return None
    _, name, rel, target = rng.choice(options)
    if rng.random() < 0.5:
        return f"What shape is {rel} the {name}?", target.kind
    return f"What color is the shape {rel} the {name}?", target.colour


def both_qa(scene: Scene, rng: random.Random) -> QA:
    first, second = rng.sample(SHAPES, 2)
    if rng.random() < 0.5 and len({s.kind for s in scene.shapes}) > 1:
        first, second = rng.sample(sorted({s.kind for s in scene.shapes}), 2)
    kinds = {s.kind for s in scene.shapes}
    answer = "yes" if first in kinds and second in kinds else "no"
    return f"Are there both {first}s and {second}s in the image?", answer


def knowledge_qa(scene: Scene, rng: random.Random) -> QA | None:
    """OK-VQA style: the answer needs a fact from outside the image about what the image shows."""
    options: list[QA] = []
    for s in scene.shapes:
        name = the_kind(scene, s)
        if name is None:
            continue
        options.append((f"Which fruit has the same color as the {name}?", FRUITS[s.colour]))
        if s.colour in TRAFFIC_LIGHT:
            options.append(
                (
                    f"What does a traffic light of the same color as the {name} tell drivers to do?",
                    TRAFFIC_LIGHT[s.colour],
                )
            )
        if s.kind in SIDES:
            options.append((f"How many sides does the {name} have?", str(SIDES[s.kind])))
    circles = [s for s in scene.shapes if s.kind == "circle"]
    if len(circles) == 1:
        options.append(("Which shape in the picture could roll like a wheel?", "circle"))
    return rng.choice(options) if options else None


# --- multiple choice (A-OKVQA style) ------------------------------------------------------------------------


@dataclass(frozen=True)
class MultipleChoice:
    question: str
    choices: tuple[str, ...]
    answer_index: int

    @property
    def letter(self) -> str:
        return "ABCD"[self.answer_index]

    def prompt(self) -> str:
        """The question with lettered options, one per line, as in mix665k's A-OKVQA records."""
        return self.question + "".join(f"\n{'ABCD'[i]}. {c}" for i, c in enumerate(self.choices))


def _choices(rng: random.Random, answer: str, pool: Sequence[str]) -> tuple[tuple[str, ...], int]:
    distractors = rng.sample([p for p in pool if p != answer], 3)
    choices = distractors + [answer]
    rng.shuffle(choices)
    return tuple(choices), choices.index(answer)


def multiple_choice(scene: Scene, rng: random.Random) -> MultipleChoice:
    """Four options, one right; counting is always askable, colour/shape/fruit questions when unambiguous."""
    items: list[tuple[str, str, Sequence[str]]] = [
        ("How many shapes are in the image?", str(len(scene.shapes)), ("1", "2", "3", "4", "5")),
    ]
    kinds = [s for s in scene.shapes if sum(o.kind == s.kind for o in scene.shapes) == 1]
    if kinds:
        s = rng.choice(kinds)
        items.append((f"What color is the {s.kind}?", s.colour, tuple(COLOURS)))
        items.append(
            (f"Which fruit has the same color as the {s.kind}?", FRUITS[s.colour], tuple(FRUITS.values()))
        )
    colours = [s for s in scene.shapes if sum(o.colour == s.colour for o in scene.shapes) == 1]
    if colours:
        c = rng.choice(colours)
        items.append((f"Which shape is {c.colour}?", c.kind, (*SHAPES, "star", "heart")))
    question, answer, pool = rng.choice(items)
    choices, index = _choices(rng, answer, pool)
    return MultipleChoice(question, choices, index)


# --- grounding (RefCOCO / Visual Genome region prompts) -----------------------------------------------------


def region_description_qa(scene: Scene, rng: random.Random) -> QA | None:
    named = [(s, referring_phrase(scene, s)) for s in scene.shapes]
    named = [(s, n) for s, n in named if n is not None]
    if not named:
        return None
    s, name = rng.choice(named)
    return REGION_DESCRIPTION_PROMPT + format_box(square_box(scene, s.box)), name


def region_box_qa(scene: Scene, rng: random.Random) -> QA | None:
    named = [(s, referring_phrase(scene, s)) for s in scene.shapes]
    named = [(s, n) for s, n in named if n is not None]
    if not named:
        return None
    s, name = rng.choice(named)
    return REGION_BOX_PROMPT + name, format_box(square_box(scene, s.box))


def ask(scene: Scene, rng: random.Random, generators: Sequence[QAGenerator], n: int) -> list[QA]:
    """Up to n QA pairs with distinct questions, from generators drawn at random; inapplicable ones skip."""
    pairs: dict[str, str] = {}
    for _ in range(8 * n):
        if len(pairs) == n:
            break
        qa = rng.choice(generators)(scene, rng)
        if qa is not None and qa[0] not in pairs:
            pairs[qa[0]] = qa[1]
    return list(pairs.items())


# --- free-form answers (LLaVA-Instruct style) ---------------------------------------------------------------


def _absent_kinds(scene: Scene) -> list[str]:
    return [k for k in SHAPES if all(s.kind != k for s in scene.shapes)]


def _conversation_candidates(scene: Scene, rng: random.Random) -> list[QA]:
    shapes = left_to_right(scene.shapes)
    n = len(shapes)
    out: list[QA] = [
        (
            "What shapes can you see in the image?",
            f"I can see {COUNT_WORDS[n]} {plural('shape', n)}: {shape_list(shapes)}.",
        ),
    ]
    for s in shapes:
        name = the_kind(scene, s)
        if name is None:
            continue
        others = [o for o in shapes if o is not s]
        where = f"The {name} is {position(scene, s.box)}"
        if others:
            o = rng.choice(others)
            oname = the_kind(scene, o)
            if oname is not None:
                where += f", {relation(s.box, o.box)} the {oname}"
        out.append((f"Where is the {name} located?", where + "."))
        if name == s.kind:
            out.append((f"What color is the {s.kind}?", f"The {s.kind} is {s.colour}."))
    kind = rng.choice(SHAPES)
    k = sum(s.kind == kind for s in shapes)
    verb = "is" if k == 1 else "are"
    out.append(
        (
            f"How many {kind}s are there in the picture?",
            f"There {verb} {COUNT_WORDS[k]} {plural(kind, k)} in the picture.",
        )
    )
    colour, kind = rng.choice(tuple(COLOURS)), rng.choice(SHAPES)
    match = [s for s in shapes if s.colour == colour and s.kind == kind]
    if match:
        answer = f"Yes, there is {a(colour + ' ' + kind)} {position(scene, match[0].box)}."
    else:
        answer = f"No, there is no {colour} {kind} in the image. It shows {shape_list(shapes)}."
    out.append((f"Is there {a(colour + ' ' + kind)} in the image?", answer))
    areas = sorted(shapes, key=lambda s: s.box[2] * s.box[3], reverse=True)
    if n > 1 and areas[0].box[2] * areas[0].box[3] > areas[1].box[2] * areas[1].box[3]:
        name = the_kind(scene, areas[0])
        if name is not None:
            out.append(("Which shape is the largest?", f"The {name} is the largest shape in the image."))
    return out


def conversation(scene: Scene, rng: random.Random) -> list[QA]:
    """A 2-4 turn conversation with full-sentence answers, like LLaVA-Instruct's conversation_58k."""
    candidates = list(dict(_conversation_candidates(scene, rng)).items())
    return rng.sample(candidates, min(len(candidates), rng.randint(2, 4)))


def detailed_description(scene: Scene, rng: random.Random) -> QA:
    """One instruction from the detail pool and a paragraph turning boxes into counts and positions."""
    shapes = left_to_right(scene.shapes)
    n = len(shapes)
    parts = [
        f"The image shows {COUNT_WORDS[n]} simple {plural('shape', n)} drawn on a plain, light background."
    ]
    parts += [f"{cap(a(phrase(s)))} is {position(scene, s.box)}." for s in shapes]
    for first, second in zip(shapes, shapes[1:]):
        parts.append(f"The {phrase(first)} is {relation(first.box, second.box)} the {phrase(second)}.")
    absent = _absent_kinds(scene)
    if absent:
        parts.append(f"There is no {join(absent).replace(' and ', ' or ')} in the picture.")
    return rng.choice(DETAIL_INSTRUCTIONS), " ".join(parts)


def complex_reasoning(scene: Scene, rng: random.Random) -> QA:
    """One question whose answer needs a step of reasoning over the scene, like complex_reasoning_77k."""
    shapes = left_to_right(scene.shapes)
    n = len(shapes)
    removed = rng.choice(shapes)
    rest = [s for s in shapes if s is not removed]
    name = the_kind(scene, removed) or phrase(removed)
    tail = f": {shape_list(rest)}" if rest else ", so only the background would be left"
    options: list[QA] = [
        (
            f"If the {name} were removed, how many shapes would remain in the picture?",
            f"The picture currently contains {COUNT_WORDS[n]} {plural('shape', n)}: {shape_list(shapes)}. "
            f"Removing the {name} would leave {COUNT_WORDS[n - 1]} {plural('shape', n - 1)}{tail}.",
        ),
    ]
    present = [k for k in SHAPES if k not in _absent_kinds(scene)]
    absent = _absent_kinds(scene)
    complete = (
        f"Adding {join([a(k) for k in absent])} would complete the set."
        if absent
        else "Nothing is missing: all three kinds are already present."
    )
    contents = join([plural(k, 2) if sum(s.kind == k for s in shapes) > 1 else a(k) for k in present])
    options.append(
        (
            "What would need to be added so that the picture has a circle, a square and a triangle?",
            f"The picture contains {contents}. {complete}",
        )
    )
    if n > 1:
        first, second = shapes[0], shapes[1]
        if first.box[1] != second.box[1]:
            higher = first if first.box[1] < second.box[1] else second
            options.append(
                (
                    f"How is the {phrase(first)} placed relative to the {phrase(second)}, and which one "
                    "reaches higher in the image?",
                    f"The {phrase(first)} is {relation(first.box, second.box)} the {phrase(second)}. The "
                    f"{phrase(higher)} reaches higher, because its top edge is closer to the top of the "
                    "image.",
                )
            )
    return rng.choice(options)


# --- text-only chat (ShareGPT style) ------------------------------------------------------------------------

_NAMES = ("Alex", "Sam", "Maria", "Wei", "Priya", "Jonas", "Amara", "Lucas")
_MIXES = {
    ("blue", "yellow"): "green",
    ("red", "yellow"): "orange",
    ("red", "blue"): "purple",
    ("red", "white"): "pink",
    ("black", "white"): "gray",
}
_POLYGONS = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
_TIPS = (
    "Here are three tips: 1. Put your phone in another room. 2. Work in short blocks with breaks. "
    "3. Write down the one task you want to finish first.",
    "Try these: 1. Keep a regular sleep schedule. 2. Drink water during the day. 3. Take a short walk "
    "after lunch.",
)


def text_conversation(rng: random.Random) -> list[QA]:
    """A generic multi-turn assistant chat that is not about any image, like ShareGPT records in the mix."""
    topic = rng.randrange(5)
    if topic == 0:
        x, y, z = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
        turns = [(f"What is {x} plus {y}?", f"{x} plus {y} equals {x + y}.")]
        if rng.random() < 0.7:
            turns.append((f"And if I multiply that by {z}?", f"{x + y} multiplied by {z} is {(x + y) * z}."))
        return turns
    if topic == 1:
        (c1, c2), mixed = rng.choice(list(_MIXES.items()))
        turns = [
            (
                f"What color do you get when you mix {c1} and {c2} paint?",
                f"Mixing {c1} and {c2} paint gives {mixed}.",
            )
        ]
        if rng.random() < 0.5:
            turns.append(
                (
                    "Thanks! Is that always true?",
                    "For paints it is a good rule of thumb, though the exact shade depends on the pigments "
                    "and on how much of each you use.",
                )
            )
        return turns
    if topic == 2:
        poly, sides = rng.choice(list(_POLYGONS.items()))
        turns = [(f"How many sides does a {poly} have?", f"A {poly} has {sides} sides.")]
        if rng.random() < 0.5:
            turns.append(
                (
                    "And how many corners?",
                    f"Also {sides}: every side ends in a corner it shares with the next side.",
                )
            )
        return turns
    if topic == 3:
        name = rng.choice(_NAMES)
        turns = [
            (
                f"Write a short birthday message for my friend {name}.",
                f"Happy birthday, {name}! I hope your day is full of good company, good food and a few "
                "pleasant surprises.",
            )
        ]
        if rng.random() < 0.6:
            turns.append(("Make it shorter.", f"Happy birthday, {name}! Have a wonderful day."))
        return turns
    word = rng.choice(("planet", "garden", "window", "rocket", "candle", "bridge"))
    turns = [(f"How do you spell {word} backwards?", f"{word} backwards is {word[::-1]}.")]
    if rng.random() < 0.5:
        turns.append(("Give me some tips for staying focused while studying.", rng.choice(_TIPS)))
    return turns
