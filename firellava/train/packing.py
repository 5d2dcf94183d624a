"""Padding-free packing: several encoded samples share one row, each attending only to itself.

`pack_indices` groups sample indices into packs under a token budget (the stage's max_length) and an image
budget, best-fit decreasing, deterministically (the same packs on every rank and on resume). `PackedDataset`
serves one pack per index, so the Trainer's seeded sampler shuffles packs and resume skips whole packs exactly as
it skips padded batches. `PackingCollator` concatenates the packs of a micro-batch into ONE row with no padding:
positions restart at 0 for every sample and there is no attention mask. From those position ids transformers
derives the sample boundaries itself: flash_attention_2 runs variable-length attention over the cumulative
sequence lengths (it detects packing only in a batch of one row, hence one row); without flash-attn the stage
runs `varlen_attention`, sdpa on each sample's slice (sdpa or eager on the whole row would need a block-diagonal
mask and compute the whole square). `PaddingFreeCollator` makes the same row of the samples of a padded batch.
The first label of every sample is ignored, so the last token of one sample never learns to predict the first
token of the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from firellava.core.chat_format import IGNORE_INDEX


def pack_indices(
    lengths: Sequence[int], images: Sequence[int], max_tokens: int, max_images: int | None
) -> list:
    """Packs (lists of sample indices) with at most `max_tokens` tokens and `max_images` images each.

    Best-fit decreasing: samples longest first, each into the open pack it fills most tightly. Packs that can
    still take an image and packs that cannot are kept apart, so a sample with an image only looks among the
    first. Every sample must fit alone (the dataset cut them to max_length).
    """
    if len(lengths) != len(images):
        raise ValueError(f"{len(lengths)} lengths but {len(images)} image counts")
    packs: list[list[int]] = []
    room: list[int] = []
    # [accepting images, full of images]: per remaining room, the packs with exactly that room
    buckets: list[list[list[int]]] = [[[] for _ in range(max_tokens + 1)] for _ in range(2)]
    counts = np.zeros((2, max_tokens + 1), dtype=np.int64)
    pack_images = []

    def put(pack: int) -> None:
        kind = int(max_images is not None and pack_images[pack] >= max_images)
        buckets[kind][room[pack]].append(pack)
        counts[kind, room[pack]] += 1

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for i in order:
        need, imgs = lengths[i], images[i]
        if need > max_tokens or need <= 0:
            raise ValueError(f"sample {i} has {need} tokens; a pack holds 1 to {max_tokens}")
        if max_images is not None and imgs > max_images:
            raise ValueError(f"sample {i} has {imgs} images; a pack holds at most {max_images}")
        best = None  # (room, kind)
        for kind in (0, 1) if imgs == 0 else (0,):
            free = np.flatnonzero(counts[kind, need:])
            if free.size and (best is None or need + free[0] < best[0]):
                best = (need + int(free[0]), kind)
        if best is None:
            pack = len(packs)
            packs.append([i])
            room.append(max_tokens - need)
            pack_images.append(imgs)
        else:
            pack = buckets[best[1]][best[0]].pop()
            counts[best[1], best[0]] -= 1
            packs[pack].append(i)
            room[pack] -= need
            pack_images[pack] += imgs
        put(pack)
    return [sorted(p) for p in packs]


def split_to_multiple(packs: list[list[int]], multiple: int) -> list[list[int]]:
    """The packs, the fullest split in two until their count is a multiple of `multiple` (where it can be).

    One optimizer step takes `multiple` packs; a last, shorter step is avoided, which also keeps a resume that
    lands on it exact (DeepSpeed counts gradient accumulation in micro-steps of its own).
    """
    packs = [list(p) for p in packs]
    while len(packs) % multiple:
        fullest = max(range(len(packs)), key=lambda k: (len(packs[k]), -k))
        if len(packs[fullest]) < 2:
            break
        half = len(packs[fullest]) // 2
        packs[fullest], tail = packs[fullest][:half], packs[fullest][half:]
        packs.append(tail)
    return packs


@dataclass(frozen=True)
class PackingReport:
    samples: int
    packs: int
    real_tokens: int
    max_tokens: int
    packs_per_device: int
    dummy_tokens: int  # a zero image's tokens for every pack without an image: at most this many are added

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "packs": self.packs,
            "samples_per_pack": round(self.samples / self.packs, 3),
            "real_tokens": self.real_tokens,
            # Of the tokens the rows carry (no padding; a zero image where a micro-batch has none): at least this.
            "real_token_fraction": round(self.real_tokens / (self.real_tokens + self.dummy_tokens), 4),
            # Of the tokens the packs could hold: what fixed-shape rows of pack_length would carry for real.
            "pack_fill": round(self.real_tokens / (self.packs * self.max_tokens), 4),
            "packs_per_device": self.packs_per_device,
        }


class PackedDataset(torch.utils.data.Dataset):
    """One pack of a dataset's samples per index; `base[i]` must be an encoded item (input_ids, labels, pixels?)."""

    def __init__(
        self,
        base: Any,
        lengths: Sequence[int],
        max_tokens: int,
        max_images: int | None,
        per_device: Callable[[float], int] = lambda samples_per_pack: 1,
        devices_per_step: int = 1,
        image_seq_length: int = 0,
    ) -> None:
        """lengths: signed as the sampler's modality lengths (negative: text-only, one image otherwise).
        per_device: packs a micro-batch takes, given the samples per pack; devices_per_step: micro-batches a step
        takes (ranks x accumulation). The pack count is made a multiple of what a step takes. image_seq_length:
        the tokens of the zero image a micro-batch without an image gets (for the report)."""
        tokens = [abs(x) for x in lengths]
        images = [int(x > 0) for x in lengths]
        self.base = base
        packs = pack_indices(tokens, images, max_tokens, max_images)
        self.packs_per_device = per_device(len(tokens) / len(packs))
        self.packs = split_to_multiple(packs, self.packs_per_device * devices_per_step)
        without_image = sum(not any(images[i] for i in p) for p in self.packs)
        self.report = PackingReport(
            len(tokens),
            len(self.packs),
            sum(tokens),
            max_tokens,
            self.packs_per_device,
            without_image * image_seq_length,
        )

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, p: int) -> list[Mapping[str, Any]]:
        return [self.base[i] for i in self.packs[p]]


def packed_row(
    samples: Sequence[Mapping[str, torch.Tensor]], image_token_id: int, image_seq_length: int, image_shape
) -> dict[str, torch.Tensor]:
    """One row of concatenated samples with per-sample positions; a zero image as its own sample if none has one."""
    ids = [s["input_ids"] for s in samples]
    labels = [s["labels"].clone() for s in samples]
    pixels = [s["pixel_values"] for s in samples if "pixel_values" in s]
    if not pixels:  # as Collator: the vision tower runs in every step on every rank (ZeRO-3)
        ids.append(torch.full((image_seq_length,), image_token_id, dtype=torch.long))
        labels.append(torch.full((image_seq_length,), IGNORE_INDEX, dtype=torch.long))
        pixels.append(torch.zeros(image_shape))
    for lab in labels:
        lab[0] = IGNORE_INDEX  # the target of the previous sample's last token
    return {
        "input_ids": torch.cat(ids)[None],
        "labels": torch.cat(labels)[None],
        "position_ids": torch.cat([torch.arange(len(t)) for t in ids])[None],
        "pixel_values": torch.stack(pixels),
    }


@dataclass(frozen=True)
class PaddingFreeCollator:
    """A micro-batch of encoded samples as one padding-free row (`train.<stage>.padding_free`): the samples a
    padded batch would hold, without its padding."""

    image_token_id: int
    image_seq_length: int
    image_shape: tuple[int, int, int]

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return packed_row(samples, self.image_token_id, self.image_seq_length, self.image_shape)


class PackingCollator(PaddingFreeCollator):
    """A micro-batch of packs (lists of encoded samples) as one padding-free row."""

    def __call__(self, packs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return super().__call__([s for pack in packs for s in pack])
