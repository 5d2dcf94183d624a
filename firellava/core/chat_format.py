"""The one chat format: LLaVA-1.5's `v1` (vicuna) template and the `plain` pretraining template.

Everything that turns a conversation into a prompt goes through this module: training builds `input_ids` and
`labels` from it, and the same template ships as the processor's Jinja `chat_template`, which eval and serve use.
`tests/test_chat_format.py` proves that the Python and the Jinja renderings are identical.

Text becomes token ids in one place, `prompt_ids`, for training and for every inference path alike: a leading
`<s>` in the rendered text is dropped and the tokenizer adds BOS itself, and the text is cut at each `<image>`
and every piece tokenized as a string of its own, as LLaVA-1.5's `tokenizer_image_token` does (with a
SentencePiece tokenizer the text after an image then starts with the word-boundary `▁`, exactly as in LLaVA's
training). Training tokenizes the whole rendered conversation once that way and takes its labels from character
offsets: a token is supervised when it starts inside an answer (or its `</s>`). It never counts tokens of
separately tokenized rounds (LLaVA's count-based masking silently zeroes samples whose rounds tokenize
differently on their own), so role markers inside a message cannot shift a mask.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
DEFAULT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("vicuna_v1", "plain")

# LLaVA data says human/gpt; chat APIs say user/assistant.
_ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class ChatFormatError(ValueError):
    """A conversation that the template cannot render faithfully. The message names the record and the turn."""


@dataclass(frozen=True)
class Segment:
    text: str
    supervised: bool


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    text: str  # "<image>" marks where an image goes (at most one slot per conversation in training)


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


# ----------------------------------------------------------------------------------------------- messages


def _content_text(content: Any, where: str) -> str:
    """Flatten OpenAI/HF-style content (a string or a list of text/image parts) to text with `<image>` marks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        images, texts = 0, []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in ("image", "image_url"):
                images += 1
            elif kind == "text":
                texts.append(str(part.get("text", "")))
            else:
                raise ChatFormatError(f"{where}: unknown content part {part!r}")
        return IMAGE_TOKEN * images + "\n".join(texts)
    raise ChatFormatError(
        f"{where}: content must be a string or a list of parts, got {type(content).__name__}"
    )


def to_messages(turns: Sequence[Mapping[str, Any]], record_id: str = "?") -> list[Message]:
    """Accept LLaVA turns (`from`/`value`) or chat messages (`role`/`content`) and return `Message`s."""
    messages = []
    for i, turn in enumerate(turns):
        where = f"record {record_id!r}, turn {i}"
        role = turn.get("from", turn.get("role"))
        if role not in _ROLE_ALIASES:
            raise ChatFormatError(
                f"{where}: field 'from'/'role' is {role!r}; expected human/gpt/user/assistant/system"
            )
        text = turn["value"] if "value" in turn else _content_text(turn.get("content"), where)
        if not isinstance(text, str):
            raise ChatFormatError(f"{where}: field 'value' must be a string, got {type(text).__name__}")
        messages.append(Message(_ROLE_ALIASES[role], text))
    return messages


def _image_first(text: str) -> str:
    """LLaVA-1.5 always moves the image to the front of its turn: `<image>\\n` + the rest, all stripped (so an
    image-only question is just `<image>`)."""
    n = text.count(IMAGE_TOKEN)
    if n == 0:
        return text
    return (IMAGE_TOKEN * n + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()


def _split_system(messages: Sequence[Message], system: str | None, where: str) -> tuple[str, list[Message]]:
    rest = list(messages)
    if rest and rest[0].role == "system":
        system = rest.pop(0).text
    if any(m.role == "system" for m in rest):
        raise ChatFormatError(f"{where}: a system message may only come first")
    return (DEFAULT_SYSTEM if system is None else system), rest


def _check_turns(messages: Sequence[Message], where: str, forbidden: Sequence[str]) -> None:
    for i, m in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise ChatFormatError(
                f"{where}, turn {i}: expected a {expected} turn, got {m.role} (turns must alternate)"
            )
        for marker in forbidden:
            if marker and marker in m.text:
                # A literal special token in a message would become a real EOS/BOS at inference, so the model
                # would learn a conversation boundary that is not there. Refuse rather than mis-split.
                raise ChatFormatError(f"{where}, turn {i}: message contains the template marker {marker!r}")
        if m.role == "assistant" and IMAGE_TOKEN in m.text:
            raise ChatFormatError(f"{where}, turn {i}: an assistant message contains {IMAGE_TOKEN!r}")
        if m.role == "assistant" and not m.text.strip():
            # An empty answer would train the model to answer with a bare space and `</s>`.
            raise ChatFormatError(f"{where}, turn {i}: an assistant message is empty")


# ----------------------------------------------------------------------------------------------- rendering


def segments(
    turns: Sequence[Mapping[str, Any]] | Sequence[Message],
    *,
    template: str = "vicuna_v1",
    system: str | None = None,
    add_generation_prompt: bool = False,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    record_id: str = "?",
) -> list[Segment]:
    """The rendering as an ordered list of segments; joining their texts gives the prompt string.

    vicuna_v1: `<s>{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:` (an empty system is omitted,
    `system=None` means the default). Only each answer and its `</s>` are supervised.
    plain: `<s><image>{caption}\\n`, the human text is dropped and the caption plus newline is supervised (no EOS),
    as in LLaVA's projector pretraining.
    """
    msgs = [t if isinstance(t, Message) else None for t in turns]
    messages = msgs if all(msgs) else to_messages(turns, record_id)  # type: ignore[arg-type]
    where = f"record {record_id!r}"
    if template == "plain":
        return _plain_segments(messages, where, bos_token)
    if template != "vicuna_v1":
        raise ChatFormatError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")

    system_text, dialogue = _split_system(messages, system, where)
    _check_turns(dialogue, where, forbidden=(bos_token, eos_token))
    if add_generation_prompt and dialogue and dialogue[-1].role != "user":
        raise ChatFormatError(f"{where}: a generation prompt needs the last message to be from the user")

    out = [Segment(bos_token, False)]
    pending = system_text + " " if system_text else ""
    for m in dialogue:
        if m.role == "user":
            pending += "USER: " + _image_first(m.text) + " "
        else:
            out.append(Segment(pending + "ASSISTANT:", False))
            out.append(Segment(" " + m.text, True))
            out.append(Segment(eos_token, True))
            pending = ""
    if add_generation_prompt:
        pending += "ASSISTANT:"
    if pending:
        out.append(Segment(pending, False))
    return out


def _plain_segments(messages: Sequence[Message], where: str, bos_token: str) -> list[Segment]:
    if len(messages) != 2 or messages[0].role != "user" or messages[1].role != "assistant":
        raise ChatFormatError(f"{where}: the plain template needs exactly one human turn and one gpt turn")
    if IMAGE_TOKEN not in messages[0].text:
        raise ChatFormatError(f"{where}, turn 0: the plain template needs {IMAGE_TOKEN!r} in the human turn")
    if IMAGE_TOKEN in messages[1].text:
        raise ChatFormatError(f"{where}, turn 1: an assistant message contains {IMAGE_TOKEN!r}")
    return [Segment(bos_token + IMAGE_TOKEN, False), Segment(messages[1].text + "\n", True)]


# ----------------------------------------------------------------------------------------------- tokens


def prompt_ids(text: str, tokenizer: Any, image_token: str = IMAGE_TOKEN) -> list[int]:
    """The token ids of a rendered prompt, as training computes them: THE way text becomes ids.

    Each `<image>` stays one placeholder id (`expand_images` widens it to the vision tower's patch count).
    """
    return _tokenize(text, tokenizer, image_token)[0]


def _tokenize(text: str, tokenizer: Any, image_token: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and each id's (start, end) character span in `text` (BOS and the image slots included)."""
    bos = tokenizer.bos_token
    had_bos = bool(bos) and text.startswith(bos)
    pos = len(bos) if had_bos else 0
    # A tokenizer without `<image>` (the model builder adds it) maps the slot to `<unk>`, which no text produces.
    image_id = tokenizer.convert_tokens_to_ids(image_token)
    image_id = tokenizer.unk_token_id if image_id is None else image_id
    chunks = text[pos:].split(image_token)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(image_id)
            spans.append((pos, pos + len(image_token)))
            pos += len(image_token)
        if chunk or not k:
            # Only the first piece gets the tokenizer's BOS, as in LLaVA's `tokenizer_image_token`.
            enc = tokenizer(chunk, add_special_tokens=not k, return_offsets_mapping=True)
            ids += enc["input_ids"]
            spans += [(pos + a, pos + b) for a, b in enc["offset_mapping"]]
        pos += len(chunk)
    if had_bos and (not ids or ids[0] != tokenizer.bos_token_id):
        # A tokenizer that adds no BOS of its own still gets the one the rendered text asks for.
        ids.insert(0, tokenizer.bos_token_id)
        spans.insert(0, (0, len(bos)))
    return ids, spans


def expand_images(
    ids: Sequence[int], image_id: int, copies: int, values: Sequence[int] | None = None
) -> list[int]:
    """`values` (default: the ids themselves) with the value at each image placeholder repeated `copies` times,
    the number of vision features one image occupies."""
    out: list[int] = []
    for tok, value in zip(ids, ids if values is None else values):
        out += [value] * (copies if tok == image_id else 1)
    return out


def encode(
    turns: Sequence[Mapping[str, Any]] | Sequence[Message],
    tokenizer: Any,
    *,
    template: str = "vicuna_v1",
    system: str | None = None,
    record_id: str = "?",
    image_token: str = IMAGE_TOKEN,
) -> Encoded:
    """`input_ids` (= `prompt_ids` of the rendered conversation) and `labels`.

    Labels are IGNORE_INDEX everywhere except on tokens that start inside a supervised segment. A token that
    spans a prompt and an answer cannot be assigned and is refused.
    """
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    segs = segments(
        turns, template=template, system=system, bos_token=bos, eos_token=eos, record_id=record_id
    )
    text = "".join(seg.text for seg in segs)
    ends = list(itertools.accumulate(len(seg.text) for seg in segs))
    input_ids, spans = _tokenize(text, tokenizer, image_token)
    labels: list[int] = []
    for tok, (start, end) in zip(input_ids, spans):
        first = min(bisect.bisect_right(ends, start), len(segs) - 1)
        last = min(bisect.bisect_right(ends, max(start, end - 1)), len(segs) - 1)
        if segs[first].supervised != segs[last].supervised:
            raise ChatFormatError(
                f"record {record_id!r}: token {tokenizer.convert_ids_to_tokens(tok)!r} at characters "
                f"{start}-{end} crosses the boundary between a prompt and an answer"
            )
        labels.append(tok if segs[first].supervised else IGNORE_INDEX)
    return Encoded(input_ids, labels)


# ----------------------------------------------------------------------------------------------- Jinja

# The same vicuna_v1 rendering for `processor.apply_chat_template` (and vLLM / the server). Content may be a
# string with `<image>` marks or a list of {"type": "image"} / {"type": "text"} parts; images go first.
CHAT_TEMPLATE = (
    "{%- set image_token = " + repr(IMAGE_TOKEN) + " -%}"
    "{%- set ns = namespace(system=" + repr(DEFAULT_SYSTEM) + ", start=0, text='', images=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set ns.system = messages[0]['content'] -%}"
    "{%- else -%}{%- set ns.system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('\\n') -%}{%- endif -%}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- if ns.system -%}{{- ns.system + ' ' -}}{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}"
    "{%- set ns.images = message['content'].count(image_token) -%}"
    "{%- set ns.text = message['content'] -%}"
    "{%- else -%}"
    "{%- set ns.images = message['content'] | selectattr('type', 'in', ['image', 'image_url']) | list | length -%}"
    "{%- set ns.text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('\\n') -%}"
    "{%- set ns.images = ns.images + ns.text.count(image_token) -%}"
    "{%- endif -%}"
    # vLLM's server test-renders the template without bos_token/eos_token: an undefined marker checks nothing.
    "{%- if (bos_token and bos_token in ns.text) or (eos_token and eos_token in ns.text) -%}"
    "{{- raise_exception('A message contains the template marker ' + eos_token + ' or ' + bos_token) -}}"
    "{%- endif -%}"
    "{%- if ns.images > 0 -%}"
    "{%- set ns.text = (image_token * ns.images + '\\n' + (ns.text.replace(image_token, '') | trim)) | trim -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' and not ns.text | trim -%}"
    "{{- raise_exception('An assistant message is empty') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + ns.text + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + ns.text + eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
