"""Finetuning throughput: padding the LLaVA way, padding after modality-length grouping, and packing, in one run.

Records are token lengths drawn per source of LLaVA-1.5's 665K mix (the published per-source counts; a typical
text length per source, the Vicuna system prompt and role tags included, lognormal around it; 576 image tokens
per image record; ShareGPT text-only). The text lengths are this script's model of the mix, not counts of the
real files. It prints, side by side:

1. the real-token fraction of one epoch under the production batch shape (8 ranks x 16 samples, max_length
   2048): padded in random order, padded in LLaVA's modality-length grouped order, and packed into packs of
   2048 and of --pack-length tokens (their fill: what a fixed-shape row of that length would carry for real; the
   padding-free row the collator builds carries no padding at all);
2. CPU training samples/s of a small random-weight LLaVA (576 image tokens) on the same records (a subset:
   --samples): padded in the two orders, the random order's batches as padding-free rows (`padding_free`), and
   packed; the rows with sdpa per sample as the training stage runs them (`sdpa_varlen`), the packs also with
   sdpa on the whole row's block-diagonal mask (what transformers does without it);
3. the real tokens of one epoch of the production 588K-style mix (665K less LLaVA-Instruct and ShareGPT, plus the
   generated instructions) and the projected 8xA100 wall time of finetuning 13B at 40% and 50% MFU:
   6 x trainable params x tokens, plus the frozen vision tower's forward (2 x its params x its tokens per image).

    .venv/bin/python perf/packing.py                  # --samples sizes the CPU training, the longest part
    .venv/bin/python perf/packing.py --samples 32     # a quick look
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.train.data import Collator  # noqa: E402
from firellava.train.packing import PackingCollator, PaddingFreeCollator, pack_indices  # noqa: E402
from firellava.train.sampler import modality_length_grouped_indices  # noqa: E402
from firellava.train.spec import packs_per_device  # noqa: E402
from firellava.train.varlen_attention import SDPA_VARLEN  # noqa: E402

IMAGE_TOKENS = 576  # CLIP ViT-L/14 at 336 px
MAX_LENGTH = 2048
# source: (records, typical text tokens, lognormal sigma, has image)
MIX_665K = {
    "llava_instruct": (157_712, 280, 0.6, True),
    "sharegpt": (40_688, 1100, 0.8, False),
    "vqav2": (82_783, 150, 0.4, True),
    "gqa": (72_140, 210, 0.4, True),
    "okvqa": (8_998, 70, 0.3, True),
    "ocr_vqa": (80_000, 140, 0.4, True),
    "a_okvqa": (66_160, 110, 0.3, True),
    "textcaps": (21_953, 70, 0.3, True),
    "refcoco": (48_447, 280, 0.5, True),
    "vg": (86_417, 330, 0.5, True),
}
# The production mix keeps the permissive sources and replaces LLaVA-Instruct with the generated instructions.
MIX_588K = {k: v for k, v in MIX_665K.items() if k not in ("llava_instruct", "sharegpt")}
MIX_588K["firellava_generated"] = (121_102, 280, 0.6, True)
A100_BF16 = 312e12  # dense bf16 peak, FLOP/s
LLM_13B = 13.0e9  # Vicuna-13B; the projector adds about 0.03e9
VISION_L14_336 = 0.304e9  # CLIP ViT-L/14-336, frozen
VISION_TOKENS = IMAGE_TOKENS + 1  # patches + class token


def signed_lengths(mix: dict, rng: random.Random, scale: float = 1.0) -> list[int]:
    """One length per record, negative for text-only (the sampler's modality convention), cut to MAX_LENGTH."""
    out = []
    for count, typical, sigma, image in mix.values():
        for _ in range(max(1, round(count * scale))):
            text = max(8, round(typical * math.exp(rng.gauss(0, sigma) - sigma**2 / 2)))
            n = min(MAX_LENGTH, text + (IMAGE_TOKENS if image else 0))
            out.append(n if image else -n)
    rng.shuffle(out)
    return out


def padded_fraction(lengths: list[int], order: list[int], batch: int) -> float:
    real = sum(abs(x) for x in lengths)
    cells = sum(
        len(order[i : i + batch]) * max(abs(lengths[j]) for j in order[i : i + batch])
        for i in range(0, len(order), batch)
    )
    return real / cells


def orders(lengths: list[int], batch: int, world: int, seed: int) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    return {
        "padded": torch.randperm(len(lengths), generator=g).tolist(),
        "padded+grouped": modality_length_grouped_indices(lengths, batch, world, g),
    }


def fractions(lengths: list[int], batch: int, world: int, seed: int, pack_length: int) -> dict[str, float]:
    out = {
        name: padded_fraction(lengths, o, batch) for name, o in orders(lengths, batch, world, seed).items()
    }
    tokens = [abs(x) for x in lengths]
    for length in sorted({MAX_LENGTH, pack_length}):
        packs = pack_indices(tokens, [int(x > 0) for x in lengths], length, None)
        out[f"packed {length}"] = sum(tokens) / (len(packs) * length)
    return out


def small_llava(vocab: int, image_token: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=336, patch_size=14, projection_dim=32,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_LENGTH,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token,
        image_seq_length=IMAGE_TOKENS,
        vision_feature_select_strategy="default",
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config)


def items_for(lengths: list[int], vocab: int, image_token: int, rng: random.Random) -> list[dict]:
    """Encoded samples of these lengths: BOS, image tokens first, text; the second half of the text supervised."""
    items = []
    for signed in lengths:
        n, image = abs(signed), signed > 0
        ids = [1] + [image_token] * (IMAGE_TOKENS if image else 0)
        ids += [rng.randrange(3, image_token) for _ in range(n - len(ids))]
        labels = [-100] * (len(ids) - (n - len(ids) // 2)) + ids[len(ids) - (n - len(ids) // 2) :]
        labels = [-100] * (n - len(labels)) + labels
        item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels[:n])}
        if image:
            item["pixel_values"] = torch.randn(3, 336, 336)
        items.append(item)
    return items


def train_rate(model, batches: list[dict], samples: int, attention: str) -> float:
    model.get_decoder().set_attn_implementation(attention)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    model(**batches[0], use_cache=False).loss.backward()  # warm-up, not timed
    optimizer.zero_grad()
    start = time.perf_counter()
    for batch in batches:
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return samples / (time.perf_counter() - start)


def cpu_rates(lengths: list[int], batch: int, seed: int, pack_length: int) -> dict[str, tuple[float, int]]:
    """Samples/s and micro-batches for each way, on the same records."""
    vocab, image_token = 2048, 2047
    items = items_for(lengths, vocab, image_token, random.Random(seed))
    image = {"image_token_id": image_token, "image_seq_length": IMAGE_TOKENS, "image_shape": (3, 336, 336)}
    padder = Collator(pad_token_id=0, **image)
    ways = {}  # name: (micro-batches, the language model's attention)
    for name, order in orders(lengths, batch, 1, seed).items():
        ways[name] = (
            [padder([items[i] for i in order[k : k + batch]]) for k in range(0, len(order), batch)],
            "sdpa",
        )
    flat, order = PaddingFreeCollator(**image), orders(lengths, batch, 1, seed)["padded"]
    ways["padding-free"] = (
        [flat([items[i] for i in order[k : k + batch]]) for k in range(0, len(order), batch)],
        SDPA_VARLEN,
    )
    tokens = [abs(x) for x in lengths]
    packs = pack_indices(tokens, [int(x > 0) for x in lengths], pack_length, None)
    per = packs_per_device(batch, len(lengths) / len(packs))
    packer = PackingCollator(**image)
    rows = [packer([[items[i] for i in p] for p in packs[k : k + per]]) for k in range(0, len(packs), per)]
    ways[f"packed {pack_length}"] = (rows, SDPA_VARLEN)
    ways[f"packed {pack_length}, mask"] = (rows, "sdpa")
    model = small_llava(vocab, image_token)
    return {
        name: (train_rate(model, batches, len(lengths), attention), len(batches))
        for name, (batches, attention) in ways.items()
    }


def projection(lengths: list[int]) -> dict[str, float]:
    tokens = sum(abs(x) for x in lengths)
    images = sum(x > 0 for x in lengths)
    llm = 6 * LLM_13B * tokens
    vision = 2 * VISION_L14_336 * VISION_TOKENS * images
    return {"records": len(lengths), "tokens": tokens, "images": images, "llm": llm, "vision": vision}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=64, help="records trained on CPU in each way")
    parser.add_argument("--batch", type=int, default=4, help="samples per CPU micro-batch (padded ways)")
    parser.add_argument(
        "--pack-length", type=int, default=4096, help="tokens a pack holds (train.pack_length)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rng = random.Random(args.seed)
    mix = signed_lengths(MIX_665K, rng)
    print(f"665K-style mix: {len(mix):,} records, {sum(abs(x) for x in mix):,} real tokens")
    print("\nreal-token fraction, one epoch, 8 ranks x 16 samples, max_length 2048")
    full = fractions(mix, 16, 8, args.seed, args.pack_length)
    for name, value in full.items():
        print(f"  {name:15s} {value:.3f}")

    subset = mix[: args.samples]
    print(f"\nCPU training, small random-weight LLaVA, the same {len(subset)} records each way")
    rates = cpu_rates(subset, args.batch, args.seed, args.pack_length)
    sub = fractions(subset, args.batch, 1, args.seed, args.pack_length)
    sub["padding-free"] = 1.0
    sub[f"packed {args.pack_length}, mask"] = sub[f"packed {args.pack_length}"]
    base = rates["padded"][0]
    for name, (rate, steps) in rates.items():
        print(
            f"  {name:21s} {rate:7.2f} samples/s  ({rate / base:.2f}x)  {steps:3d} micro-batches  "
            f"real-token fraction {sub[name]:.3f}"
        )

    p = projection(signed_lengths(MIX_588K, random.Random(args.seed)))
    total = p["llm"] + p["vision"]
    print(
        f"\n588K-style mix, one epoch: {p['records']:,} records, {p['images']:,} images, {p['tokens']:,} tokens"
    )
    print(
        f"  FLOPs = 6 x {LLM_13B:.3g} params x {p['tokens']:.4g} tokens = {p['llm']:.4g}"
        f"  + vision forward 2 x {VISION_L14_336:.3g} x {VISION_TOKENS} x {p['images']:,} = {p['vision']:.4g}"
        f"  -> {total:.4g}"
    )
    for mfu in (0.4, 0.5):
        hours = total / (8 * A100_BF16 * mfu) / 3600
        print(f"  8xA100 (bf16 peak {A100_BF16:.3g} FLOP/s each) at {mfu:.0%} MFU: {hours:.1f} h")


if __name__ == "__main__":
    main()
