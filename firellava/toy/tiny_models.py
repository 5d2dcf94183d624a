"""Tiny models for the toy world, built locally and saved in HF format (nothing is downloaded).

- a tokenizer laid out as Llama's (`tokenize_llama`): BPE pieces trained with `tokenizers` on the toy world's own
  text, with `▁` word boundaries and a prepended space, byte fallback to Llama's 256 `<0xNN>` pieces, and
  `<unk>` / `<s>` / `</s>` at ids 0 / 1 / 2 (BOS added on encode), loaded by transformers' `LlamaTokenizer` as
  Vicuna's is: the toy run crosses every SentencePiece boundary production crosses;
- a tiny CLIP vision tower (`CLIPVisionModel`), initialised from the seed and pretrained on toy scenes
  (`vision_pretrain`), as CLIP arrives pretrained;
- a tiny Llama LLM (`LlamaForCausalLM`), initialised from the seed and pretrained on toy text (`llm_pretrain`),
  as Vicuna arrives pretrained.

They stand in for Vicuna and CLIP-L through the same code; only their sizes differ.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
)

from firellava.core.chat_format import IMAGE_TOKEN, segments
from firellava.core.tokenization import PROBES, SPECIAL_PROBE
from firellava.toy.beside import beside, here
from firellava.toy.llm_pretrain import LlmPretrainSpec, pretrain_llm
from firellava.toy.scenes import COLOURS, SHAPES
from firellava.toy.vision_pretrain import VisionPretrainSpec, pretrain_vision_tower

T = TypeVar("T")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama
BYTE_PIECES = tuple(f"<0x{b:02X}>" for b in range(256))  # ids 3-258: byte fallback


@dataclass(frozen=True)
class VisionSizes:
    """The tiny CLIP tower's shape (`toy_world.vision`)."""

    image_size: int
    patch_size: int
    hidden: int
    layers: int
    heads: int

    @property
    def grid(self) -> int:
        """Patches per side: the LLM's text pretraining lays scenes out on the same grid."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class LlmSizes:
    """A tiny Llama's shape (`toy_world.llm`, `toy_world.teacher.llm`); the vocabulary is its tokenizer's."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    max_position_embeddings: int
    # Width of one attention head; None: hidden / heads. Llama allows heads x head_dim != hidden, which buys more
    # heads of a size vLLM's CPU attention runs (32 and up) without widening the whole model.
    head_dim: int | None = None
    # Key/value heads, each shared by heads / kv_heads query heads (grouped-query attention); None: one per head.
    kv_heads: int | None = None


def _training_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Words as the tokenizer meets them: special tokens, `<image>` and control characters cut the text
    (`<image>` is the model's added token, not text, as in Vicuna's vocabulary; control characters are byte
    pieces, never trained), the first word gets Llama's prepended `▁` (`prepend_scheme="first"`), and a
    run of spaces before a word is a whitespace piece of its own, its last `▁` going with the word, as Llama's
    SentencePiece training (`allow_whitespace_only_pieces`) splits it. No trained piece crosses a word boundary,
    so the whole-string BPE of inference (`split=False`) gives the same pieces. Letters, digits and other
    characters are never one piece, as SentencePiece's script and digit splitting keep them apart in Llama's
    vocabulary (`USER` `:`, not `USER:`; a digit alone, without the word boundary before it: `▁` `3`)."""
    cuts = "|".join([*map(re.escape, (*SPECIAL_TOKENS, IMAGE_TOKEN)), r"[\x00-\x1f\x7f]"])
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(cuts), "removed"),
            pre_tokenizers.Metaspace("▁", prepend_scheme="first", split=False),
            pre_tokenizers.Split(Regex(r"▁?\p{L}+|\p{N}|▁?[^▁\p{L}\p{N}]+"), "isolated"),
        ]
    )


def _bpe_pieces(vocab: dict[str, int], merges: list[tuple[str, str]], piece: str) -> list[str]:
    model = models.BPE(vocab=vocab, merges=merges)
    return [t.value for t in model.tokenize(piece)]


def _required_pieces(words: Iterable[str]) -> list[str]:
    """`▁word` for each of `words`, and the pieces the whitespace and legacy probes
    (`firellava.core.tokenization`) expect as Llama has them."""
    expected = [*PROBES.values(), SPECIAL_PROBE[1]]
    probed = [p for pieces in expected for p in pieces if p not in SPECIAL_TOKENS and p not in BYTE_PIECES]
    return [*(f"▁{w}" for w in words), *probed]


def train_tokenizer(texts: Iterable[str], vocab_size: int, words: Iterable[str] = ()) -> LlamaTokenizer:
    """A Llama-layout tokenizer whose pieces are BPE-trained on `texts`, each of `words` one piece after a space.

    Vocabulary: the special tokens, the 256 byte pieces, then the trained pieces in the trainer's order, so the
    ids match Llama's up to the first trained piece. Merges: the trainer's (most frequent first), then those the
    required pieces still need, then whitespace-only merges last, so a run of spaces leaves its last `▁` to the
    word after it (`"a  b"` is `▁a ▁ ▁b`, as Llama's merge priorities give)."""
    required = _required_pieces(words)
    budget = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_PIECES)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = _training_pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + budget - sum(map(len, required)),  # room for the required pieces
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    chat = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}] * 2
    skeleton = "".join(seg.text for seg in segments(chat))  # `</s>USER:` as every later round starts
    tok.train_from_iterator([skeleton, *texts], trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    vocab = {p: i for p, i in trained["vocab"].items() if p not in SPECIAL_TOKENS}
    merges = [tuple(m) for m in trained["merges"]]
    for piece in required:
        for char in piece:  # a character the texts lack
            vocab.setdefault(char, len(vocab) + len(SPECIAL_TOKENS))
        parts = _bpe_pieces(vocab, merges, piece)
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab) + len(SPECIAL_TOKENS))
    # LLaVA's masking (preprocess_v1, non-legacy) counts `▁USER` one piece longer than `USER` after `</s>`, as
    # Llama's vocabulary has them; a `▁U...` merge learned from the toy text would break that.
    while (first := _bpe_pieces(vocab, merges, "▁USER")[0]) != "▁":
        merges = [m for m in merges if m[0] + m[1] != first]
    merges.sort(key=lambda m: set(m[0] + m[1]) == {"▁"})  # stable: whitespace runs last
    pieces = sorted(vocab, key=vocab.__getitem__)
    if len(pieces) > budget:
        raise ValueError(
            f"toy tokenizer: {len(pieces)} trained pieces exceed toy_world.vocab_size={vocab_size}"
        )
    layout = [*SPECIAL_TOKENS, *BYTE_PIECES, *pieces]
    tokenizer = LlamaTokenizer(
        vocab={p: i for i, p in enumerate(layout)},
        merges=merges,
        legacy=False,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=2048,
        padding_side="right",
    )
    # Saved in tokenizer_config.json as Vicuna-v1.5's says it: no word boundary after a special token, BOS added.
    tokenizer.init_kwargs.update(legacy=False, add_bos_token=True, add_eos_token=False)
    return tokenizer


def build_vision_tower(sizes: VisionSizes, seed: int) -> tuple[CLIPVisionModel, CLIPImageProcessor]:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=sizes.hidden,
        intermediate_size=sizes.hidden * 4,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        projection_dim=sizes.hidden,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": sizes.image_size},
        crop_size={"height": sizes.image_size, "width": sizes.image_size},
    )
    return CLIPVisionModel(config), image_processor


def build_llm(sizes: LlmSizes, tokenizer: LlamaTokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed + 1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.kv_heads or sizes.heads,
        head_dim=sizes.head_dim or sizes.hidden // sizes.heads,
        max_position_embeddings=sizes.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def build_tiny_models(
    texts: Iterable[str],
    out_dir: Path,
    vocab_size: int,
    vision_sizes: VisionSizes,
    llm_sizes: LlmSizes,
    seed: int,
    vision_pretrain: VisionPretrainSpec,
    llm_pretrain: LlmPretrainSpec,
    reads_tokenizer: Callable[[Path], T] | None = None,
) -> tuple[dict[str, Path], dict[str, dict[str, float]], T | None]:
    """Write `tokenizer/`, `vision/` and `llm/` (the LLM directory carries the tokenizer too, like Vicuna's).

    `reads_tokenizer`: a training that needs the saved tokenizer (the toy teacher), called with its directory.
    When both the tower and the LLM pretrain, the tower and then that training run in a second process on one
    core while the LLM trains on the others (`beside`; `LlmPretrainSpec.steps_beside`); otherwise here, before
    the LLM. Returns the paths, the held-out probe accuracies of the pretrained tower and LLM (`vision`,
    `llm`; empty when a pretraining has 0 steps) and what `reads_tokenizer` returned."""
    paths = {"tokenizer": out_dir / "tokenizer", "vision_tower": out_dir / "vision", "llm": out_dir / "llm"}
    alongside = bool(vision_pretrain.steps and llm_pretrain.steps)
    with beside() if alongside else here() as submit:
        tower = submit(train_vision_tower, vision_sizes, vision_pretrain, seed, paths["vision_tower"])
        # The LLM's text pretraining writes a scene position as one colour word and one kind word.
        tokenizer = save_tokenizer(texts, vocab_size, [*COLOURS, *SHAPES], paths["tokenizer"])
        reading = submit(reads_tokenizer, paths["tokenizer"]) if reads_tokenizer else None

        def wait_beside() -> None:
            tower.get()
            if reading is not None:
                reading.get()

        llm_probe = train_llm(
            tokenizer,
            paths["llm"],
            llm_sizes,
            llm_pretrain,
            seed,
            vision_sizes.grid,
            beside=wait_beside if alongside else None,
        )
    read = reading.get() if reading is not None else None
    return paths, {"vision": tower.get(), "llm": llm_probe}, read


def save_tokenizer(texts: Iterable[str], vocab_size: int, words: list[str], out_dir: Path) -> LlamaTokenizer:
    """`train_tokenizer`, saved in `out_dir`."""
    tokenizer = train_tokenizer(texts, vocab_size, words=words)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def train_llm(
    tokenizer: LlamaTokenizer,
    out_dir: Path,
    sizes: LlmSizes,
    spec: LlmPretrainSpec,
    seed: int,
    grid: int,
    beside: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Build the LLM, pretrain it (`pretrain_llm`; 0 steps leave it random) and save it with its tokenizer;
    returns its held-out probe accuracies (empty when it did not pretrain)."""
    llm = build_llm(sizes, tokenizer, seed)
    probes = pretrain_llm(llm, tokenizer, spec, seed, grid, beside) if spec.steps else {}
    llm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return probes


def train_vision_tower(
    sizes: VisionSizes, spec: VisionPretrainSpec, seed: int, out_dir: Path
) -> dict[str, float]:
    """Build the tower, pretrain it (0 steps leave it random) and save it with its image processor in `out_dir`;
    returns its held-out probe accuracies (empty when it did not pretrain)."""
    vision, image_processor = build_vision_tower(sizes, seed)
    probes = pretrain_vision_tower(vision, spec, seed) if spec.steps else {}
    vision.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    return probes
