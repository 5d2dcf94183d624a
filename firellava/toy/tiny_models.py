"""Tiny models for the toy world, built locally and saved in HF format (nothing is downloaded).

- a byte-level BPE tokenizer trained with `tokenizers` on the toy world's own text, with Llama's special tokens
  (`<unk>`, `<s>`, `</s>`; BOS added on encode), so any text encodes and the chat format works unchanged;
- a tiny CLIP vision tower (`CLIPVisionModel`), initialised from the seed and pretrained on toy scenes
  (`vision_pretrain`), as CLIP arrives pretrained;
- a tiny Llama LLM (`LlamaForCausalLM`), initialised from the seed and pretrained on toy text (`llm_pretrain`),
  as Vicuna arrives pretrained.

They stand in for Vicuna and CLIP-L through the same code; only their sizes differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from firellava.core.chat_format import DEFAULT_SYSTEM
from firellava.toy.llm_pretrain import LlmPretrainSpec, pretrain_llm
from firellava.toy.vision_pretrain import VisionPretrainSpec, pretrain_vision_tower

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


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


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: every string encodes, and pieces never cross a space, so segment-wise encoding
    (the chat format's) equals whole-string encoding."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([DEFAULT_SYSTEM, "USER: ASSISTANT:", *texts], trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
        padding_side="right",
        add_bos_token=True,
    )


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


def build_llm(sizes: LlmSizes, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed + 1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.heads,
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
) -> tuple[dict[str, Path], dict[str, dict[str, float]]]:
    """Write `tokenizer/`, `vision/` and `llm/` (the LLM directory carries the tokenizer too, like Vicuna's).

    Returns the paths and the held-out probe accuracies of the pretrained tower and LLM (`vision`, `llm`; empty
    when a pretraining has 0 steps)."""
    tokenizer = train_tokenizer(texts, vocab_size)
    vision, image_processor = build_vision_tower(vision_sizes, seed)
    probes = {"vision": pretrain_vision_tower(vision, vision_pretrain, seed) if vision_pretrain.steps else {}}
    llm = build_llm(llm_sizes, tokenizer, seed)
    probes["llm"] = (
        pretrain_llm(llm, tokenizer, llm_pretrain, seed, vision_sizes.grid) if llm_pretrain.steps else {}
    )
    paths = {"tokenizer": out_dir / "tokenizer", "vision_tower": out_dir / "vision", "llm": out_dir / "llm"}
    tokenizer.save_pretrained(paths["tokenizer"])
    vision.save_pretrained(paths["vision_tower"])
    image_processor.save_pretrained(paths["vision_tower"])
    llm.save_pretrained(paths["llm"])
    tokenizer.save_pretrained(paths["llm"])
    return paths, probes
