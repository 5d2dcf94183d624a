"""The teacher's prompts: per type a system message and few-shot examples (context -> response), written by this
project in LLaVA's `Question:` / `===` / `Answer:` format.

Chat messages are `[system, (user: context_k, assistant: response_k)..., user: context]`: everything before the
last user message is identical for every request of a type, so it renders to a byte-identical prefix that
vLLM's prefix cache serves once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

QA = tuple[str, str]
SEPARATOR = "==="


def format_response(kind: str, pairs: Sequence[QA] | str) -> str:
    """A response as the teacher should write it: Q/A blocks joined by `===`; detail is the bare paragraph."""
    if kind == "detail":
        if not isinstance(pairs, str):
            raise TypeError("a detail response is one paragraph")
        return pairs.strip()
    blocks = []
    for question, answer in pairs:
        blocks += [f"Question:\n{question.strip()}", f"Answer:\n{answer.strip()}"]
    return f"\n{SEPARATOR}\n".join(blocks)


@dataclass(frozen=True)
class FewShot:
    context: str
    response: str


@dataclass(frozen=True)
class PromptSet:
    name: str
    system: dict[str, str]
    examples: dict[str, tuple[FewShot, ...]]

    def messages(self, kind: str, context: str) -> list[dict[str, str]]:
        if kind not in self.system:
            raise KeyError(f"prompt set {self.name!r} has no prompts for type {kind!r}")
        out = [{"role": "system", "content": self.system[kind]}]
        for ex in self.examples[kind]:
            out += [{"role": "user", "content": ex.context}, {"role": "assistant", "content": ex.response}]
        out.append({"role": "user", "content": context})
        return out


# --- production: real COCO photos ---------------------------------------------------------------------------

_SEEING = (
    "Answer as if you were looking at the image yourself. Never mention the sentences, the object list, "
    "coordinates or bounding boxes, and never say that you were given a description."
)

_LLAVA_SYSTEM = {
    "conversation": (
        "You are an AI visual assistant looking at a single image. What you know about it comes from five "
        "sentences that describe the same image, but you talk as if you see it.\n"
        "Write a conversation between yourself and a person asking about this photo. Ask varied questions "
        "about the kinds of objects, how many there are, what they are doing, where they are and how they are "
        "placed relative to each other, and answer them in the tone of an assistant seeing the image. Only ask "
        "questions that have a definite answer: something visible in the image, or something clearly absent "
        "from it. Also include one or two more demanding questions about the background or the events in the "
        "image, and answer those in detail.\n"
        f"{_SEEING}\n"
        f"Write each turn as `Question:` or `Answer:` on its own line followed by the text, and put a line "
        f"`{SEPARATOR}` between turns."
    ),
    "detail": (
        "You are an AI visual assistant looking at a single image. You receive five sentences describing it "
        "and a list of the objects in it, one per line as `category: [x1, y1, x2, y2]`, floats from 0 to 1 "
        "for the top-left and bottom-right corners relative to the image size.\n"
        "Describe the image in a detailed paragraph: what is there, how many, where things are and how they "
        "relate. Turn the positions into plain words (left, in the background, next to) and counts.\n"
        f"{_SEEING}\n"
        "Write only the description, with no heading."
    ),
    "complex_reasoning": (
        "You are an AI visual assistant looking at a single image. You receive five sentences describing it "
        "and a list of the objects in it, one per line as `category: [x1, y1, x2, y2]`, floats from 0 to 1 "
        "for the top-left and bottom-right corners relative to the image size.\n"
        "Write one question about the image that needs reasoning or background knowledge beyond listing "
        "what is visible, such as why something is happening, what may happen next or what a person should "
        "watch out for, and answer it in detail with clear steps of reasoning. The question must not give away "
        "details of the image that the answer relies on.\n"
        f"{_SEEING}\n"
        f"Write `Question:` on its own line followed by the question, then a line `{SEPARATOR}`, then "
        "`Answer:` on its own line followed by the answer."
    ),
}

_KITCHEN_CAPS = (
    "A woman in a striped apron cuts vegetables at a kitchen counter.\n"
    "A person preparing a salad in a bright kitchen.\n"
    "Someone chopping carrots next to a bowl of tomatoes.\n"
    "A lady slicing food on a wooden cutting board.\n"
    "A kitchen with a woman cooking and a window behind her."
)
_KITCHEN_BOXES = (
    "person: [0.312, 0.104, 0.655, 0.987]\n"
    "knife: [0.503, 0.552, 0.611, 0.604]\n"
    "bowl: [0.702, 0.598, 0.894, 0.731]\n"
    "carrot: [0.422, 0.585, 0.517, 0.622]\n"
    "carrot: [0.447, 0.601, 0.540, 0.640]"
)
_STREET_CAPS = (
    "A red double decker bus drives down a busy city street.\n"
    "People waiting at a bus stop as a bus approaches.\n"
    "A tall red bus on a road lined with shops.\n"
    "A city bus pulling up to a crowded sidewalk.\n"
    "Pedestrians and a bus on a street on a cloudy day."
)
_STREET_BOXES = (
    "bus: [0.208, 0.151, 0.704, 0.893]\n"
    "person: [0.752, 0.455, 0.803, 0.781]\n"
    "person: [0.815, 0.471, 0.862, 0.790]\n"
    "person: [0.889, 0.462, 0.941, 0.802]\n"
    "handbag: [0.826, 0.598, 0.859, 0.672]"
)

_LLAVA_EXAMPLES = {
    "conversation": (
        FewShot(
            _KITCHEN_CAPS,
            format_response(
                "conversation",
                [
                    ("What is the woman doing in the image?", "She is cutting vegetables on a wooden board."),
                    (
                        "What vegetables can be seen?",
                        "She is chopping carrots, and there is a bowl of tomatoes.",
                    ),
                    ("Where is the bowl?", "The bowl sits on the counter to the right of the cutting board."),
                    (
                        "What might she be preparing?",
                        "With carrots being chopped and tomatoes ready in a bowl, she is most likely making a "
                        "fresh salad. Salads like this are often prepared just before a meal so the vegetables "
                        "stay crisp.",
                    ),
                ],
            ),
        ),
        FewShot(
            _STREET_CAPS,
            format_response(
                "conversation",
                [
                    ("What kind of vehicle is in the picture?", "A red double decker bus."),
                    ("Are there people near the bus?", "Yes, a few people stand on the sidewalk by a stop."),
                    (
                        "What are the people likely doing?",
                        "They are probably waiting to board the bus as it pulls up to the stop.",
                    ),
                ],
            ),
        ),
    ),
    "detail": (
        FewShot(
            f"{_KITCHEN_CAPS}\n\n{_KITCHEN_BOXES}",
            "A woman wearing a striped apron stands at a kitchen counter in the middle of the scene, slicing "
            "two carrots with a knife on a wooden cutting board. To her right, a bowl filled with tomatoes "
            "waits on the counter, and a window behind her lets daylight into the bright kitchen. She appears "
            "to be in the middle of preparing a fresh salad.",
        ),
        FewShot(
            f"{_STREET_CAPS}\n\n{_STREET_BOXES}",
            "A large red double decker bus takes up most of the left and center of the image as it drives "
            "along a city street lined with shops. On the sidewalk to the right, three people stand close "
            "together near a bus stop, one of them carrying a handbag, waiting as the bus approaches. The sky "
            "is overcast, giving the street a cloudy, everyday look.",
        ),
    ),
    "complex_reasoning": (
        FewShot(
            f"{_KITCHEN_CAPS}\n\n{_KITCHEN_BOXES}",
            format_response(
                "complex_reasoning",
                [
                    (
                        "What should the person keep in mind to stay safe while doing this task?",
                        "She is cutting vegetables with a sharp knife, so she should keep the fingers of her "
                        "guiding hand curled away from the blade and cut on a stable board that does not slip. "
                        "Round vegetables such as carrots can roll, so cutting them in half first to give them "
                        "a flat side makes each cut safer.",
                    )
                ],
            ),
        ),
        FewShot(
            f"{_STREET_CAPS}\n\n{_STREET_BOXES}",
            format_response(
                "complex_reasoning",
                [
                    (
                        "Why might this kind of vehicle be common in this city?",
                        "Double decker buses carry many passengers on a small footprint, which suits busy city "
                        "streets with limited road space. Cities with heavy pedestrian traffic and many "
                        "short trips, like the crowded stop here, benefit from that extra capacity.",
                    )
                ],
            ),
        ),
    ),
}

LLAVA = PromptSet("llava", _LLAVA_SYSTEM, _LLAVA_EXAMPLES)

# --- toy world: shapes on a light background (short, so the tiny teacher trains and runs in seconds) -------

_TOY_SYSTEM = {
    "conversation": (
        "You see one image, known from five sentences. Write a conversation about it as if you see it. "
        f"Turns are `Question:` or `Answer:` lines, separated by `{SEPARATOR}`."
    ),
    "detail": (
        "You see one image, known from five sentences and object boxes. Describe it in detail as if you see "
        "it, without coordinates."
    ),
    "complex_reasoning": (
        "You see one image, known from five sentences and object boxes. Ask one question that needs "
        f"reasoning and answer it, as `Question:` then `{SEPARATOR}` then `Answer:`."
    ),
}
# No few-shot examples: the toy teacher learns the format in training, and short prompts keep its training and
# generation within seconds on a CPU. The production set above is the one whose shared prefix matters.
_TOY_EXAMPLES: dict[str, tuple[FewShot, ...]] = {kind: () for kind in _TOY_SYSTEM}

TOY = PromptSet("toy", _TOY_SYSTEM, _TOY_EXAMPLES)

PROMPT_SETS = {p.name: p for p in (LLAVA, TOY)}


def prompt_set(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]
