"""The training loss with the LM head run on supervised positions only.

HF's causal-LM loss projects every position onto the vocabulary and then ignores all but the answers: the image,
the system prompt and the questions are most of a sequence. Here the model gets `logits_to_keep`, a mask of the
positions whose next token is supervised, and projects only those; the loss is HF's (the sum over supervised
tokens divided by the Trainer's `num_items_in_batch`, the mean without it), so the gradient is too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from firellava.core.chat_format import IGNORE_INDEX


def predicts_a_label(labels: torch.Tensor) -> torch.Tensor:
    """(rows, width) bool: the positions whose next token is supervised (row-major, as the labels they predict)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def supervised_targets(labels: torch.Tensor) -> torch.Tensor:
    """The supervised tokens, in the row-major order of the positions `predicts_a_label(labels)` marks."""
    return labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]


def supervised_cross_entropy(
    outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Cross-entropy of logits computed at `predicts_a_label(labels)` against the labels they predict; the
    Trainer's `compute_loss_func`."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    targets = supervised_targets(labels)
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{logits.shape[0]} logits for {targets.shape[0]} supervised tokens: the model was not given "
            "logits_to_keep=predicts_a_label(labels)"
        )
    if num_items_in_batch is None:
        return F.cross_entropy(logits.float(), targets)
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
