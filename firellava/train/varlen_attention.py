"""Attention over padding-free rows without flash-attn: each sample of the row attends to itself alone.

A padding-free row (`packing`, `padding_free`) holds several samples back to back, positions restarting at 0
for each. flash_attention_2 computes such a row sample by sample from the positions (variable-length attention).
Without it (on CPU), transformers gives sdpa a block-diagonal mask over the whole row, and sdpa computes every
query against every key of the row, the other samples' included, then masks them: a row of n samples of length
L costs n times the attention of the same samples padded. `SDPA_VARLEN` is sdpa called once per sample, causal,
on that sample's slice of the row: the attention work is that of the samples alone, and the result is the
block-diagonal mask's (`tests/test_train_packing.py`).

Registered with transformers under `SDPA_VARLEN` when this module is imported; `use_varlen_attention` puts the
language model on it. Only training rows need it: the exported model keeps the configured implementation (the
choice is not saved with the config).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

SDPA_VARLEN = "sdpa_varlen"


def sample_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sample in a row of one batch, from its positions restarting at 0."""
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError(
            f"padding-free attention takes one row of positions, got shape {tuple(position_ids.shape)}"
        )
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a padding-free row must start a sample at its first position (position 0)")
    return list(zip(starts, [*starts[1:], position_ids.shape[1]], strict=True))


def sdpa_varlen_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, causal, on each sample's slice of the row (query: batch, heads, positions,
    head size); the outputs side by side, as sdpa returns them (batch, positions, heads, head size)."""
    if attention_mask is not None or position_ids is None:
        raise ValueError(
            f"{SDPA_VARLEN} attends within the samples of a padding-free row: it takes the row's position ids "
            "and no padding mask (train.<stage>.packing or padding_free)"
        )
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"{SDPA_VARLEN} is for training rows: queries and keys must be the same positions")
    kwargs.pop("is_causal", None)  # causal within each sample, whatever the caller's default
    parts = [
        sdpa_attention_forward(
            module, query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], None, is_causal=True, **kwargs
        )[0]
        for s, e in sample_bounds(position_ids)
    ]
    return torch.cat(parts, dim=1), None


AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_forward)
# flash-attn's mask function: no mask at all for rows without padding (the samples' bounds come from the
# positions), where sdpa's would build the block-diagonal square this module avoids.
AttentionMaskInterface.register(SDPA_VARLEN, flash_attention_mask)


def use_varlen_attention(model: Any) -> None:
    """Put a LLaVA model's language model on `SDPA_VARLEN`; the vision tower keeps its own attention. Set on the
    language model itself: it reads a config of its own, not the `text_config` object LLaVA's config holds."""
    model.get_decoder().set_attn_implementation(SDPA_VARLEN)
