"""Scenes of the toy world: a few coloured shapes (and sometimes one word) on a light background.

The world is deliberately small and fully known: every fact a caption or an answer states can be read off the
`Scene`, so a tiny model trained on its text must learn real colours, shapes, counts and positions. Scenes are
pure data sampled from a caller's `random.Random`; drawing is separate so that boxes can be checked against
pixels.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]  # COCO xywh, integer pixels: the shape covers columns x..x+w-1, rows y..y+h-1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
WORDS: tuple[str, ...] = (
    "STOP",
    "CAFE",
    "OPEN",
    "BOOK",
    "TAXI",
    "SALE",
    "EXIT",
    "MILK",
    "PARK",
    "BANK",
    "SHOP",
    "FOOD",
)
# Light and far from every shape colour, so a pixel is unambiguously background or shape even after JPEG.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((245, 245, 240), (236, 241, 246), (246, 239, 230))
TEXT_COLOUR = (0, 0, 0)

MIN_SIDE = 48
MAX_SIDE = 96
MIN_SHAPE = 14
GAP = 3  # free pixels between any two objects: boxes never touch and "left of" is always clear
FONT_SIZE = 12


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    box: Box


@dataclass(frozen=True)
class Scene:
    image_id: int
    width: int
    height: int
    shapes: tuple[Shape, ...]
    word: str | None = None
    word_box: Box | None = None
    background: tuple[int, int, int] = BACKGROUNDS[0]


@functools.lru_cache(maxsize=1)
def font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font: no font file to ship or download, identical on every machine."""
    return ImageFont.load_default(size=FONT_SIZE)


def _text_ink(word: str) -> Box:
    """Offset and size of the word's ink relative to the point it is drawn at."""
    left, top, right, bottom = font().getbbox(word)
    return int(left), int(top), int(right - left), int(bottom - top)


def _apart(a: Box, b: Box) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax + aw + GAP <= bx or bx + bw + GAP <= ax or ay + ah + GAP <= by or by + bh + GAP <= ay


def _place(rng: random.Random, width: int, height: int, w: int, h: int, taken: list[Box]) -> Box | None:
    for _ in range(60):
        box = (rng.randint(1, width - w - 1), rng.randint(1, height - h - 1), w, h)
        if all(_apart(box, other) for other in taken):
            return box
    return None


def sample_scene(rng: random.Random, image_id: int, *, with_word: bool = False) -> Scene:
    """Sample 1-3 non-overlapping shapes (and optionally a word) on a canvas of random, often non-square size.

    Sizes vary so that code which normalizes boxes (pad-to-square, [0, 1] coordinates) is exercised the way
    real photos exercise it.
    """
    width = rng.randint(MIN_SIDE, MAX_SIDE)
    height = rng.randint(MIN_SIDE, MAX_SIDE)
    background = rng.choice(BACKGROUNDS)
    taken: list[Box] = []
    word, word_box = None, None
    if with_word:
        word = rng.choice(WORDS)
        _, _, ww, wh = _text_ink(word)
        word_box = _place(rng, width, height, ww, wh, taken)
        if word_box is None:  # cannot happen on an empty canvas of at least MIN_SIDE; kept as a guard
            raise RuntimeError(f"no room for the word {word!r} in a {width}x{height} scene")
        taken.append(word_box)
    target = rng.randint(1, 3)
    largest = max(MIN_SHAPE, int(min(width, height) * 0.55))
    shapes: list[Shape] = []
    for _ in range(target):
        kind = rng.choice(SHAPES)
        colour = rng.choice(tuple(COLOURS))
        w = rng.randint(MIN_SHAPE, largest)
        h = w if kind != "triangle" else max(MIN_SHAPE, min(largest, round(w * rng.uniform(0.8, 1.2))))
        box = _place(rng, width, height, w, h, taken)
        if box is None:
            # A large shape may not fit beside the others; the smallest one always fits next to the first.
            box = _place(rng, width, height, MIN_SHAPE, MIN_SHAPE, taken)
        if box is None:
            break
        taken.append(box)
        shapes.append(Shape(kind, colour, box))
    if not shapes:
        raise RuntimeError(f"no room for a shape in a {width}x{height} scene")
    return Scene(image_id, width, height, tuple(shapes), word, word_box, background)


def shape_outline(shape: Shape) -> list[tuple[float, float]]:
    """The shape's outline in continuous pixel coordinates: what COCO segmentation polygons store."""
    x, y, w, h = shape.box
    if shape.kind == "square":
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    if shape.kind == "triangle":
        return [(x, y + h), (x + w, y + h), (x + w / 2, y)]
    cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2
    steps = 24
    return [
        (cx + rx * math.cos(2 * math.pi * i / steps), cy + ry * math.sin(2 * math.pi * i / steps))
        for i in range(steps)
    ]


def draw_scene(scene: Scene) -> Image.Image:
    """Render the scene so that each shape's pixels span exactly its box (no anti-aliasing on shapes)."""
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x, y, w, h = shape.box
        right, bottom = x + w - 1, y + h - 1  # PIL's rectangles are inclusive of their last pixel
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse([x, y, right, bottom], fill=fill)
        elif shape.kind == "square":
            draw.rectangle([x, y, right, bottom], fill=fill)
        elif shape.kind == "triangle":
            # A flat 1-2 pixel apex keeps the top row inked for every width, so the box stays tight.
            draw.polygon([(x, bottom), (right, bottom), (x + w // 2, y), (x + (w - 1) // 2, y)], fill=fill)
        else:
            raise ValueError(f"unknown shape kind {shape.kind!r} in scene {scene.image_id}")
    if scene.word is not None and scene.word_box is not None:
        dx, dy, _, _ = _text_ink(scene.word)
        wx, wy, _, _ = scene.word_box
        draw.text((wx - dx, wy - dy), scene.word, fill=TEXT_COLOUR, font=font())
    return image
