"""Packing on a GPU: a 7B-shaped LLaVA (random weights, bf16, flash-attn 2 when installed), padded vs packed, on
records shaped like the 665K mix (perf/packing.py's model). The packed loss matches the padded one within bf16
noise and, with flash-attn, a packed step trains more samples per second; step time, tokens/s and MFU are printed
(run with -s). Skipped without CUDA (tests/conftest.py); it has not run yet (no GPU was lent to this work).
"""

from __future__ import annotations

import importlib.util
import random
import time
from pathlib import Path

import pytest
import torch

from firellava.train.data import Collator
from firellava.train.export import set_use_cache
from firellava.train.packing import PackingCollator, pack_indices
from firellava.train.spec import packs_per_device

pytestmark = pytest.mark.gpu

FLASH = importlib.util.find_spec("flash_attn") is not None
PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12}  # dense FLOP/s by device family
SAMPLES, BATCH, PACK_LENGTH = 32, 4, 4096


def perf_script():
    path = Path(__file__).resolve().parents[1] / "perf" / "packing.py"
    spec = importlib.util.spec_from_file_location("perf_packing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def llava_7b_shaped():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32000, image_seq_length=576,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model.set_attn_implementation("flash_attention_2" if FLASH else "sdpa")
    model.model.vision_tower.requires_grad_(False)  # frozen, as in finetuning
    model.gradient_checkpointing_enable()
    set_use_cache(model, False)  # as the training stage: no cache, so transformers looks for packed positions
    return model


def timed_steps(model, batches):
    """Forward + backward of every micro-batch (no optimizer: its cost does not depend on the batch shape)."""
    losses, counts = [], []
    model(**batches[0]).loss.backward()  # warm-up
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        counts.append(int((batch["labels"][:, 1:] != -100).sum()))
    torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    # The per-token mean over all micro-batches: what one optimizer step over them minimises.
    return time.perf_counter() - start, sum(x * n for x, n in zip(losses, counts)) / sum(counts)


def test_7b_shaped_llava_packed_matches_padded_and_trains_more_samples_per_second():
    perf = perf_script()
    lengths = perf.signed_lengths(perf.MIX_665K, random.Random(0))[:SAMPLES]
    items = perf.items_for(lengths, 32000, 32000, random.Random(0))
    image = {"image_token_id": 32000, "image_seq_length": 576, "image_shape": (3, 336, 336)}
    padder = Collator(pad_token_id=0, **image)
    padded = [padder(items[k : k + BATCH]) for k in range(0, SAMPLES, BATCH)]
    tokens = [abs(x) for x in lengths]
    packs = pack_indices(tokens, [int(x > 0) for x in lengths], PACK_LENGTH, None)
    per = packs_per_device(BATCH, SAMPLES / len(packs))
    packer = PackingCollator(**image)
    packed = [packer([[items[i] for i in p] for p in packs[k : k + per]]) for k in range(0, len(packs), per)]

    def cuda(batches):
        return [
            {k: v.cuda() if k != "pixel_values" else v.cuda().bfloat16() for k, v in b.items()}
            for b in batches
        ]

    model = llava_7b_shaped()
    llm_params = (
        sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    )
    peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
    real = sum(tokens)
    results = {}
    for name, batches in (("padded", cuda(padded)), ("packed", cuda(packed))):
        seconds, loss = timed_steps(model, batches)
        processed = sum(b["input_ids"].numel() for b in batches)
        mfu = 6 * llm_params * real / seconds / peak if peak else float("nan")
        results[name] = (seconds, loss)
        print(
            f"{name}: {len(batches)} micro-batches, step {seconds / len(batches):.3f}s, {SAMPLES / seconds:.2f} "
            f"samples/s, {real / seconds:,.0f} real tokens/s, real-token fraction {real / processed:.3f}, "
            f"MFU {mfu:.1%} ({torch.cuda.get_device_name()}, attention {model.config._attn_implementation})"
        )
    # The same tokens weighted the same: the per-token mean agrees within bf16 noise.
    mean = {name: loss for name, (_, loss) in results.items()}
    assert abs(mean["packed"] - mean["padded"]) < 0.01 * abs(mean["padded"]), mean
    if FLASH:  # sdpa masks the other samples' attention in a packed row rather than skipping it
        assert results["packed"][0] < results["padded"][0], results
