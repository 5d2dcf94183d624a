"""LLaVA's `group_by_modality_length` sampler (llava/train/llava_trainer.py), same semantics.

Lengths are positive for records with an image and negative for text-only ones. Each modality is shuffled
into megabatches of one global batch (world size x accumulation x per-device batch); inside a megabatch the
samples are sorted by length and dealt to ranks so that the summed lengths are balanced. All full megabatches
are shuffled together; the two leftovers form one final mixed batch. With a single modality this falls back
to plain length grouping. (LLaVA counts words; we have exact token lengths and use them.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def split_to_even_chunks(indices: Sequence[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal indices to `num_chunks` chunks of equal size, each next index to the chunk with the least total."""
    if len(indices) % num_chunks:
        return [list(indices[i::num_chunks]) for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")  # type: ignore[call-overload]
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    mega = world_size * batch_size
    megabatches = [indices[i : i + mega] for i in range(0, len(lengths), mega)]
    megabatches = [sorted(m, key=lambda i: lengths[i], reverse=True) for m in megabatches]
    megabatches = [split_to_even_chunks(m, lengths, world_size) for m in megabatches]
    return [i for m in megabatches for chunk in m for i in chunk]


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator | None = None
) -> list[int]:
    if any(length == 0 for length in lengths):
        raise ValueError("group_by_modality_length needs non-zero lengths")
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    mm = [(i, x) for i, x in enumerate(lengths) if x > 0]
    lang = [(i, -x) for i, x in enumerate(lengths) if x < 0]
    mega = world_size * batch_size

    def megabatches_of(pairs: list[tuple[int, int]]) -> list[list[int]]:
        idx, lens = [p[0] for p in pairs], [p[1] for p in pairs]
        order = length_grouped_indices(lens, batch_size, world_size, generator)
        shuffled = [idx[i] for i in order]
        return [shuffled[i : i + mega] for i in range(0, len(shuffled), mega)]

    mm_batches, lang_batches = megabatches_of(mm), megabatches_of(lang)
    last = mm_batches[-1] + lang_batches[-1]
    full = mm_batches[:-1] + lang_batches[:-1]
    order = torch.randperm(len(full), generator=generator).tolist()
    megabatches = [full[i] for i in order]
    if last:
        megabatches.append(sorted(last))  # as LLaVA: by index, the one mixed batch
    return [i for m in megabatches for i in m]


class ModalityLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Yields the global order; the Trainer's dataloader then hands consecutive batches to ranks in turn."""

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(
            modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator)
        )


class SeededShuffleSampler(torch.utils.data.Sampler[int]):
    """A permutation drawn from (seed, epoch) alone, never from the global RNG: the same on every rank, and the
    same after a resume (which restores the global RNG of the checkpoint before the first batch is drawn)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())
