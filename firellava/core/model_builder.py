"""Build transformers' `LlavaForConditionalGeneration` from a CLIP vision tower and a Llama LLM.

The result is the same layout llava-hf publishes, so plain `from_pretrained` and vLLM load what we save:
image token and pad token added to the tokenizer, embeddings resized to a multiple of 64 (new rows drawn around
the mean of the old ones), `vision_feature_layer=-2` with patch features (CLS dropped), and the `mlp2x_gelu`
projector, which is exactly Llava's `linear_1 -> GELU -> linear_2`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from firellava.core.chat_format import CHAT_TEMPLATE, IMAGE_TOKEN
from firellava.core.tokenization import check_whitespace

log = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
PROJECTOR_TYPES = ("mlp2x_gelu",)
FEATURE_STRATEGIES = {"patch": "default", "cls_patch": "full"}


@dataclass(frozen=True)
class ModelSpec:
    """What to build. Paths may be local directories or hub ids (production)."""

    vision_tower: str
    llm: str
    tokenizer: str | None = None  # defaults to the LLM's
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature: str = "patch"  # LLaVA's mm_vision_select_feature: patch drops CLS
    image_aspect_ratio: str = "pad"  # "pad": pad to square with the CLIP mean colour; "square": centre crop
    pad_to_multiple_of: int = 64
    dtype: str = "float32"
    family: str | None = (
        None  # the base LLM's model family, for licence terms on training data (core/terms.py)
    )

    def __post_init__(self) -> None:
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"model.projector_type={self.projector_type!r}; supported: {PROJECTOR_TYPES}")
        if self.vision_feature not in FEATURE_STRATEGIES:
            raise ValueError(
                f"model.vision_feature={self.vision_feature!r}; supported: {list(FEATURE_STRATEGIES)}"
            )
        if self.image_aspect_ratio not in ("pad", "square"):
            raise ValueError(f"model.image_aspect_ratio={self.image_aspect_ratio!r}; supported: pad, square")


def num_image_tokens(vision_config: CLIPVisionConfig, vision_feature: str = "patch") -> int:
    """Placeholder tokens one image occupies: (image_size / patch_size)^2, plus CLS only for `cls_patch`."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return patches + (1 if vision_feature == "cls_patch" else 0)


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """`<image>` as a special, unnormalized token and a real `<pad>` (never unk: a true `<unk>` is text)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.unk_token:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"


def build_image_processor(vision_config: CLIPVisionConfig, *, image_aspect_ratio: str = "pad"):
    """CLIP preprocessing at the tower's resolution; `pad` pads to a square with the CLIP mean colour first."""
    size = vision_config.image_size
    return LlavaImageProcessorPil(
        do_pad=image_aspect_ratio == "pad",
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )


def build_processor(
    tokenizer: PreTrainedTokenizerBase,
    vision_config: CLIPVisionConfig,
    *,
    image_aspect_ratio: str = "pad",
    vision_feature: str = "patch",
) -> LlavaProcessor:
    """A processor whose `<image>` expansion matches the model: for CLIP-L/14-336, 576 tokens."""
    add_special_tokens(tokenizer)
    return LlavaProcessor(
        image_processor=build_image_processor(vision_config, image_aspect_ratio=image_aspect_ratio),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=FEATURE_STRATEGIES[vision_feature],
        # The processor counts patches + this, minus one for the "default" (CLS-dropping) strategy.
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )


def llava_config(
    vision_config: CLIPVisionConfig, text_config, tokenizer: PreTrainedTokenizerBase, spec: ModelSpec
) -> LlavaConfig:
    return LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=num_image_tokens(vision_config, spec.vision_feature),
        projector_hidden_act="gelu",
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=FEATURE_STRATEGIES[spec.vision_feature],
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_llava(spec: ModelSpec) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Assemble the model from its parts; the projector is freshly initialised (pretraining trains it)."""
    dtype = getattr(torch, spec.dtype)
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer or spec.llm)
    check_whitespace(tokenizer, spec.tokenizer or spec.llm)
    vision = CLIPVisionModel.from_pretrained(spec.vision_tower, dtype=dtype)
    llm = AutoModelForCausalLM.from_pretrained(spec.llm, dtype=dtype)
    processor = build_processor(
        tokenizer,
        vision.config,
        image_aspect_ratio=spec.image_aspect_ratio,
        vision_feature=spec.vision_feature,
    )
    config = llava_config(vision.config, llm.config, tokenizer, spec)
    # The shell is built on the meta device and the loaded parts are put in as they are: a 13B model is never
    # initialised twice or held twice in memory. Only the projector is new.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    del vision, llm
    # New rows for <image>/<pad> (and the padding up to a multiple of 64) are sampled around the old rows' mean.
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=spec.pad_to_multiple_of)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    log.info(
        "built Llava: vision %s, llm %s, %d image tokens, vocab %d (padded %d), %.1fM params",
        spec.vision_tower,
        spec.llm,
        config.image_seq_length,
        len(tokenizer),
        model.get_input_embeddings().num_embeddings,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, processor
