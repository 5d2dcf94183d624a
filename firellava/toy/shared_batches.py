"""A second process that computes part of each training batch's gradient, for the toy LLM's text pretraining.

The toy LLM's step is many small matrix products, and a second torch thread speeds it up far less than twice
(`perf/toy_world_steps.py`). Two processes with their own threads, each computing half of a batch, were
faster under the entries' allocator settings and not under glibc's defaults (docs/experiments.md section 29).
The helper's replica reads this process's parameters from shared memory, so after the optimizer's step here it
computes with the new values; no weights travel. Per step, only its examples go to it and its summed gradient
comes back, through a shared buffer.

The split and the order of every sum are fixed (`deal`; this process's micro-batches, then the helper's), so a
run computes the same model every time on a given machine and thread count.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

if TYPE_CHECKING:
    from firellava.toy.llm_pretrain import SceneExample


def deal(examples: Sequence[SceneExample]) -> tuple[list[SceneExample], list[SceneExample]]:
    """The examples sorted by template and length, dealt alternately into two shares: each share gets about half
    of every template's examples and of their positions, so the two processes take about as long."""
    ordered = sorted(examples, key=lambda e: (e.template, len(e.input_ids)))
    return ordered[0::2], ordered[1::2]


def _helper(
    config: LlamaConfig,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    connection: Any,
    threads: int,
    pad_id: int,
    micro_batch: int,
) -> None:
    from firellava.toy.llm_pretrain import accumulate_batch  # which imports this module

    torch.set_num_threads(threads)
    llm = LlamaForCausalLM(config)
    for mine, shared in zip(llm.parameters(), params, strict=True):
        mine.data = shared
    llm.train()
    while (work := connection.recv()) is not None:
        examples, items = work
        llm.zero_grad(set_to_none=True)
        loss = accumulate_batch(llm, examples, pad_id, micro_batch, items=items)
        for param, grad in zip(llm.parameters(), grads, strict=True):
            grad.copy_(param.grad)
        connection.send(loss)


class Helper:
    """`start(examples, items)` has the helper compute the gradient of its examples' summed loss divided by
    `items`; `add_gradient(llm)` waits for it, adds it to `llm`'s gradients and returns that part's loss."""

    def __init__(self, connection: Any, grads: list[torch.Tensor]) -> None:
        self._connection = connection
        self._grads = grads

    def start(self, examples: Sequence[SceneExample], items: int) -> None:
        self._connection.send((list(examples), items))

    def add_gradient(self, llm: LlamaForCausalLM) -> float:
        loss = self._connection.recv()
        for param, grad in zip(llm.parameters(), self._grads, strict=True):
            param.grad.add_(grad)
        return loss


@contextlib.contextmanager
def helper(llm: LlamaForCausalLM, threads: int, pad_id: int, micro_batch: int) -> Iterator[Helper]:
    """Start the helper process with `threads` torch threads, `llm`'s parameters moved to shared memory (in
    place: the optimizer keeps them). Leaving the block stops it."""
    for param in llm.parameters():
        param.data.share_memory_()
    grads = [torch.zeros_like(param).share_memory_() for param in llm.parameters()]
    context = multiprocessing.get_context("spawn")  # torch's threads do not survive a fork
    here, there = context.Pipe()
    process = context.Process(
        target=_helper,
        args=(llm.config, [p.data for p in llm.parameters()], grads, there, threads, pad_id, micro_batch),
        daemon=True,
    )
    process.start()
    there.close()
    try:
        yield Helper(here, grads)
        here.send(None)
        process.join()
    finally:
        if process.is_alive():
            process.terminate()
            process.join()
        here.close()
    if process.exitcode:
        raise RuntimeError(f"the toy LLM's gradient helper exited with code {process.exitcode}")
