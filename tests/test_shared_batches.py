"""The toy LLM's text pretraining with a second process computing half of each batch (firellava/toy/
shared_batches.py): the same gradient as one process, a model that does not depend on the run, the shares
dealt evenly."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace

import pytest
import torch
from transformers import AutoTokenizer

from firellava.toy.llm_pretrain import (
    LlmPretrainSpec,
    _examples,
    accumulate_batch,
    pretrain_llm,
    supervised_items,
)
from firellava.toy.shared_batches import deal, helper
from firellava.toy.tiny_models import build_llm
from tests.conftest import toy_world_spec

GRID = 6


@pytest.fixture(scope="module")
def tok(toy_world):
    return AutoTokenizer.from_pretrained(toy_world["models"]["tokenizer"])


def test_deal_gives_each_share_half_of_every_template_and_every_example_once(tok):
    batch = _examples(LlmPretrainSpec(steps=1, batch_size=32), tok, seed=4, grid=GRID)
    mine, theirs = deal(batch)
    assert sorted(map(id, mine + theirs)) == sorted(map(id, batch))
    for template in ("plain", "vicuna_v1"):
        counts = [sum(e.template == template for e in share) for share in (mine, theirs)]
        assert abs(counts[0] - counts[1]) <= 1, (template, counts)
    lengths = [sum(len(e.input_ids) for e in share) for share in (mine, theirs)]
    assert abs(lengths[0] - lengths[1]) <= 0.1 * sum(lengths), lengths


def test_the_helper_computes_its_share_of_the_batch_gradient_with_this_process_s_weights(tok):
    llm = build_llm(replace(toy_world_spec().llm, layers=2), tok, seed=3)
    batch = _examples(LlmPretrainSpec(steps=1, batch_size=16), tok, seed=7, grid=GRID)
    pad = tok.pad_token_id or 0
    whole = accumulate_batch(llm, batch, pad, micro_batch=8)
    expected = [p.grad.clone() for p in llm.parameters()]
    with helper(llm, threads=1, pad_id=pad, micro_batch=8) as other:
        for _ in range(2):  # the second time after the weights changed here
            llm.zero_grad(set_to_none=True)
            items = supervised_items(batch)
            mine, theirs = deal(batch)
            other.start(theirs, items)
            loss = accumulate_batch(llm, mine, pad, 8, items=items) + other.add_gradient(llm)
            assert loss == pytest.approx(whole, rel=1e-5)
            for param, grad in zip(llm.parameters(), expected):
                torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)
            with torch.no_grad():
                for param in llm.parameters():
                    param.mul_(0.5)  # the helper must see this through shared memory
            llm.zero_grad(set_to_none=True)
            whole = accumulate_batch(llm, batch, pad, micro_batch=8)
            expected = [p.grad.clone() for p in llm.parameters()]


def trained(tok, processes: int) -> list[torch.Tensor]:
    llm = build_llm(replace(toy_world_spec().llm, layers=1), tok, seed=0)
    spec = LlmPretrainSpec(steps=4, batch_size=8, steps_beside=1, processes=processes)
    pretrain_llm(llm, tok, spec, 0, GRID)
    return [p.detach().clone() for p in llm.parameters()]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="a helper needs a second core")
def test_pretraining_with_a_helper_is_the_one_process_training_up_to_rounding_and_repeats_exactly(tok):
    cores = torch.get_num_threads()
    alone, shared, again = trained(tok, 1), trained(tok, 2), trained(tok, 2)
    assert torch.get_num_threads() == cores  # the cores come back after the helper stops
    assert any(not torch.equal(a, b) for a, b in zip(alone, shared))  # the sums run in another order
    for a, b in zip(alone, shared):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(shared, again))


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="a helper needs a second core")
def test_the_helper_starts_up_while_the_llm_waits_for_the_training_beside_it_and_stops_at_the_end(tok):
    llm = build_llm(replace(toy_world_spec().llm, layers=1), tok, seed=0)
    before = set(multiprocessing.active_children())
    waits = []
    spec = LlmPretrainSpec(steps=3, batch_size=4, steps_beside=1, processes=2)
    pretrain_llm(llm, tok, spec, 0, GRID, beside=lambda: waits.append(set(multiprocessing.active_children())))
    assert len(waits) == 1 and len(waits[0] - before) == 1  # one helper, already started at the wait
    assert set(multiprocessing.active_children()) == before
