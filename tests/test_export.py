"""The finetune stage's checkpoint directory in the llava-hf layout that vLLM's loader requires, and transformers
loading it back unchanged."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from firellava.core.io import read_json, write_json
from firellava.train.export import published_name, published_vision_names


def tiny_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=128
    )
    return LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text))


def test_vision_weights_keep_the_vision_model_level(tmp_path):
    model = tiny_llava()
    model.save_pretrained(tmp_path)
    published_vision_names(tmp_path)
    names = list(load_file(str(tmp_path / "model.safetensors")))
    vision = [n for n in names if n.startswith("vision_tower.")]
    assert vision and all(n.startswith("vision_tower.vision_model.") for n in vision)
    assert any(n.startswith("multi_modal_projector.") for n in names)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    published_vision_names(tmp_path)  # a second pass changes nothing
    assert list(load_file(str(tmp_path / "model.safetensors"))) == names


def test_shard_index_is_renamed_too(tmp_path):
    write_json(
        tmp_path / "model.safetensors.index.json", {"weight_map": {"vision_tower.post_layernorm.bias": "a"}}
    )
    published_vision_names(tmp_path)
    assert read_json(tmp_path / "model.safetensors.index.json")["weight_map"] == {
        "vision_tower.vision_model.post_layernorm.bias": "a"
    }
    assert published_name("language_model.lm_head.weight") == "language_model.lm_head.weight"
