"""Model building: the Llava layout, the processor's image-token count, padding, and a save/load round trip."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from firellava.core.model_builder import (
    ModelSpec,
    build_processor,
    llava_config,
    num_image_tokens,
)
from tests.llava_helpers import load_llava, render, save_llava


def test_production_image_token_count_from_configs_alone(tokenizer):
    """CLIP ViT-L/14-336 (its config, no weights) gives 576 placeholders in the processor and the model config."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    assert num_image_tokens(vision) == 576
    processor = build_processor(tokenizer, vision)
    batch = processor(images=Image.new("RGB", (500, 375)), text="<image>\nhi", return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 576
    assert tuple(batch["pixel_values"].shape) == (1, 3, 336, 336)
    text = LlamaConfig(
        hidden_size=5120, num_attention_heads=40, num_hidden_layers=1, vocab_size=len(tokenizer)
    )
    spec = ModelSpec(vision_tower="clip", llm="vicuna")
    config = llava_config(vision, text, tokenizer, spec)
    assert isinstance(config, LlavaConfig)
    assert config.image_seq_length == 576
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.image_token_index == image_id and config.pad_token_id == tokenizer.pad_token_id


def test_pad_to_square_uses_the_clip_mean_colour(tokenizer):
    vision = CLIPVisionConfig(image_size=32, patch_size=8)
    padded = build_processor(tokenizer, vision, image_aspect_ratio="pad").image_processor
    cropped = build_processor(tokenizer, vision, image_aspect_ratio="square").image_processor
    wide = Image.new("RGB", (64, 16), (255, 255, 255))
    pixels = padded(wide, return_tensors="np")["pixel_values"][0]
    mean = np.array(padded.image_mean)[:, None]
    std = np.array(padded.image_std)[:, None]
    # Top rows are padding: after normalisation the CLIP mean colour (122, 116, 104) is ~0.
    top = pixels[:, 0, :] * std + mean
    np.testing.assert_allclose(top, np.round(mean * 255) / 255 * np.ones_like(top), atol=0.02)
    # Centre crop keeps only white.
    crop = cropped(wide, return_tensors="np")["pixel_values"][0] * std[..., None] + mean[..., None]
    np.testing.assert_allclose(crop, 1.0, atol=0.02)


def test_built_model_layout(tiny_llava, toy_world):
    model, processor = tiny_llava
    tok = processor.tokenizer
    assert {"<image>", "<pad>"} <= set(tok.get_vocab())
    emb = model.get_input_embeddings().num_embeddings
    assert emb % 64 == 0 and emb >= len(tok)
    assert model.get_output_embeddings().weight.shape[0] == emb
    proj = model.model.multi_modal_projector
    vision_hidden = model.config.vision_config.hidden_size
    text_hidden = model.config.text_config.hidden_size
    assert proj.linear_1.weight.shape == (text_hidden, vision_hidden)
    assert proj.linear_2.weight.shape == (text_hidden, text_hidden)
    assert model.config.image_seq_length == num_image_tokens(model.config.vision_config)
    # The vision tower and LLM weights are the parts', not fresh ones.
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(toy_world["models"]["vision_tower"])
    for name, tensor in clip.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], tensor), name


def test_save_load_round_trip_then_generate(tiny_llava, tmp_path):
    model, processor = tiny_llava
    model.eval()
    prompt = render(
        [{"role": "user", "content": "<image>\nWhat color is the circle?"}], add_generation_prompt=True
    )
    image = Image.new("RGB", (60, 40), (200, 30, 30))
    inputs = processor(images=image, text=prompt, return_tensors="pt", add_special_tokens=False)
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == model.config.image_seq_length
    assert (
        inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    )  # the template's BOS, not a second one
    assert inputs["input_ids"][0, 1] != processor.tokenizer.bos_token_id
    with torch.no_grad():
        before = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    save_llava(model, processor, tmp_path / "llava")
    loaded, loaded_processor = load_llava(tmp_path / "llava")
    assert loaded_processor.chat_template == processor.chat_template
    assert loaded_processor.image_processor.do_pad
    again = loaded_processor(images=image, text=prompt, return_tensors="pt", add_special_tokens=False)
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        after = loaded.generate(**again, max_new_tokens=6, do_sample=False)
    assert before.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(before, after)
