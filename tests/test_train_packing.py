"""Packing: budgets, rows, and the tiny LLaVA's loss and gradients packed equal to the same samples padded."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers.modeling_flash_attention_utils import (
    _is_packed_sequence,
    prepare_fa_kwargs_from_position_ids,
)

from firellava.core.chat_format import IGNORE_INDEX
from firellava.train.data import Collator, EncodingSpec, LlavaDataset, image_fields
from firellava.train.export import set_use_cache
from firellava.train.packing import (
    PackedDataset,
    PackingCollator,
    PaddingFreeCollator,
    pack_indices,
    packed_row,
    split_to_multiple,
)
from firellava.train.sampler import SeededShuffleSampler
from firellava.train.spec import packs_per_device
from firellava.train.varlen_attention import SDPA_VARLEN, sample_bounds, use_varlen_attention


def test_packs_respect_token_and_image_budgets_and_hold_every_sample_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    images = [int(rng.random() < 0.7) for _ in range(500)]
    packs = pack_indices(lengths, images, 128, 2)
    assert sorted(i for p in packs for i in p) == list(range(500))
    assert all(sum(lengths[i] for i in p) <= 128 for p in packs)
    assert all(sum(images[i] for i in p) <= 2 for p in packs)
    assert max(sum(images[i] for i in p) for p in packs) == 2
    assert pack_indices(lengths, images, 128, 2) == packs  # the same on every rank and on resume
    # Best-fit decreasing leaves little room anywhere; the image budget binds, so it costs packs.
    unlimited = pack_indices(lengths, images, 128, None)
    assert sum(lengths) / (len(unlimited) * 128) > 0.97
    assert len(unlimited) < len(packs)
    with pytest.raises(ValueError, match="sample 1 has 129 tokens"):
        pack_indices([5, 129], [0, 0], 128, None)
    with pytest.raises(ValueError, match="sample 0 has 2 images"):
        pack_indices([5], [2], 128, 1)


def test_micro_batch_packs_carry_about_the_configured_samples_in_whole_steps():
    assert packs_per_device(16, 2.6) == 6 and packs_per_device(2, 8.0) == 1
    packs = [[0, 1, 2, 3], [4], [5, 6], [7, 8, 9]]
    split = split_to_multiple(packs, 3)
    assert split == [[0, 1], [4], [5, 6], [7], [2, 3], [8, 9]]  # the fullest split first, then the next
    assert split_to_multiple([[0], [1]], 3) == [[0], [1]]  # nothing left to split: a short last step


def test_pack_order_depends_on_seed_and_epoch_only():
    sampler = SeededShuffleSampler(50, seed=3)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(1)  # a resume restores the checkpoint's global RNG before drawing: it must not matter
    assert list(sampler) == first and sorted(first) == list(range(50)) and first != list(range(50))
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_trainer_serves_packs_in_seeded_order_every_epoch_and_resumes_inside_it(tmp_path):
    from accelerate import skip_first_batches
    from transformers import TrainingArguments

    from firellava.train.stage import LlavaTrainer

    class Packs(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, p):
            return [p]

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, seed=5, report_to="none"
    )
    trainer = LlavaTrainer(
        model=torch.nn.Linear(1, 1),
        args=args,
        train_dataset=Packs(),
        data_collator=lambda packs: [p for pack in packs for p in pack],
        packed=True,
    )
    loader = trainer.get_train_dataloader()
    orders = []
    for epoch in (0, 1, 2):
        expected = SeededShuffleSampler(10, seed=5)
        expected.set_epoch(epoch)
        orders.append(list(expected))
        # As the Trainer's epoch loop: a resumed epoch skips the micro-batches already trained, then sets it.
        for skipped in (0, 3):
            resumed = skip_first_batches(loader, skipped) if skipped else loader
            resumed.set_epoch(epoch)
            assert [p for batch in resumed for p in batch] == list(expected)[2 * skipped :]
    assert len({tuple(order) for order in orders}) == 3  # the epoch reached the sampler: a new order each


def sample(ids, labels, image=False):
    item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if image:
        item["pixel_values"] = torch.ones(3, 4, 4)
    return item


def test_packed_row_restarts_positions_and_never_labels_across_samples():
    a = sample([1, 9, 9, 5, 6], [5, -100, -100, 5, 6], image=True)  # a first label that would cross
    b = sample([1, 7, 8], [-100, 7, 8])
    row = PackingCollator(image_token_id=9, image_seq_length=2, image_shape=(3, 4, 4))([[a], [b]])
    assert "attention_mask" not in row  # with one, transformers would not look for packed positions
    assert row["input_ids"].tolist() == [[1, 9, 9, 5, 6, 1, 7, 8]]
    assert row["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert row["labels"].tolist() == [[-100, -100, -100, 5, 6, -100, 7, 8]]
    assert row["pixel_values"].shape == (1, 3, 4, 4)
    assert a["labels"][0] == 5  # the dataset's item is left as it was
    # Without an image, a zero image as a sample of its own keeps the vision tower in the step (ZeRO-3).
    text = packed_row([b], 9, 2, (3, 4, 4))
    assert text["input_ids"].tolist() == [[1, 7, 8, 9, 9]] and text["position_ids"].tolist() == [
        [0, 1, 2, 0, 1]
    ]
    assert text["labels"][0, 3:].tolist() == [IGNORE_INDEX] * 2 and text["pixel_values"].abs().sum() == 0
    # What flash_attention_2 derives from these positions: one variable-length sequence per sample.
    assert _is_packed_sequence(row["position_ids"], batch_size=1)
    (cu_q, cu_k), (max_q, _) = prepare_fa_kwargs_from_position_ids(row["position_ids"])
    assert cu_q.tolist() == cu_k.tolist() == [0, 5, 8] and int(max_q) == 5


@pytest.fixture(scope="module")
def toy_items(toy_world, tiny_llava):
    model, processor = tiny_llava
    config = model.config
    spec = EncodingSpec("vicuna_v1", 2048, config.image_token_id, config.image_seq_length)
    data = Path(toy_world["dir"]) / "data"
    ds = LlavaDataset(
        data / "llava_v1_5_mix665k.json", data, processor.tokenizer, processor.image_processor, spec
    )
    with_image = [i for i, x in enumerate(ds.lengths) if x > 0][:5]
    text = [i for i, x in enumerate(ds.lengths) if x < 0][:2]
    assert len(with_image) == 5 and len(text) == 2
    return ds, [ds[i] for i in sorted(with_image + text)]


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss  # as the Trainer calls it: no use_cache argument, the config decides
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_the_padded_batch(tiny_llava, toy_items, attention):
    model, processor = tiny_llava
    _, items = toy_items
    config = model.config
    image = image_fields(config)
    padded = Collator(pad_token_id=processor.tokenizer.pad_token_id, **image)(items)
    packed = PackingCollator(**image)([items[:3], items[3:]])
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())  # not one padding token
    before = config._attn_implementation
    model.set_attn_implementation(attention)
    try:
        model.train()
        # With the language model's default cache, transformers does not look for packed positions: the row
        # gets one causal mask and each sample attends to those before it (what the stage's set_use_cache stops).
        assert config.text_config.use_cache
        loss_crossing, _ = loss_and_grads(model, packed)
        set_use_cache(model, False)  # as the training stage
        loss_pad, grads_pad = loss_and_grads(model, padded)
        loss_pack, grads_pack = loss_and_grads(model, packed)
        # Shuffling the samples inside the row changes nothing: no sample sees another.
        loss_shuffled, _ = loss_and_grads(model, PackingCollator(**image)([items[::-1]]))
    finally:
        set_use_cache(model, True)
        model.set_attn_implementation(before)
        model.eval()
    assert abs(loss_crossing - loss_pad) > 1e-4
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_shuffled, loss_pad, rtol=1e-5, atol=1e-6)
    assert set(grads_pack) == set(grads_pad) and any(g.abs().sum() > 0 for g in grads_pad.values())
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_per_sample_attention_gives_the_padded_batch_loss_and_gradients(tiny_llava, toy_items):
    """What the training stage runs on padding-free rows without flash-attn (`varlen_attention`)."""
    model, processor = tiny_llava
    _, items = toy_items
    config = model.config
    image = image_fields(config)
    padded = Collator(pad_token_id=processor.tokenizer.pad_token_id, **image)(items)
    row = PaddingFreeCollator(**image)(items)
    assert row["input_ids"].shape[1] == int(padded["attention_mask"].sum())
    assert len(sample_bounds(row["position_ids"])) == len(items)
    before = model.get_decoder().config._attn_implementation
    model.train()
    set_use_cache(model, False)
    try:
        loss_pad, grads_pad = loss_and_grads(model, padded)  # sdpa on the padded batch
        use_varlen_attention(model)
        assert model.model.language_model.config._attn_implementation == SDPA_VARLEN
        assert model.model.vision_tower.config._attn_implementation == "sdpa"  # the tower is not a row
        loss_row, grads_row = loss_and_grads(model, row)
        with pytest.raises(ValueError, match="padding mask"):
            loss_and_grads(model, padded)  # a padded batch needs its mask, which this attention refuses
    finally:
        model.get_decoder().set_attn_implementation(before)
        set_use_cache(model, True)
        model.eval()
    torch.testing.assert_close(loss_row, loss_pad, rtol=1e-5, atol=1e-6)
    assert set(grads_row) == set(grads_pad)
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_row[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_sample_bounds_come_from_restarting_positions():
    assert sample_bounds(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [(0, 3), (3, 5), (5, 6)]
    with pytest.raises(ValueError, match="one row"):
        sample_bounds(torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(ValueError, match="position 0"):
        sample_bounds(torch.tensor([[3, 4, 0]]))


def test_packed_dataset_serves_its_packs(toy_items):
    ds, _ = toy_items
    packed = PackedDataset(ds, ds.lengths, max(abs(x) for x in ds.lengths), 2)
    report = packed.report.as_dict()
    assert report["samples"] == len(ds) and report["packs"] == len(packed) < len(ds)
    assert report["real_tokens"] == sum(abs(x) for x in ds.lengths)
    assert 0 < report["pack_fill"] <= 1 and report["real_token_fraction"] == 1.0  # no zero image counted
    text_only = PackedDataset(ds, [-abs(x) for x in ds.lengths], 4096, None, image_seq_length=36)
    fraction = text_only.report.as_dict()["real_token_fraction"]
    assert fraction == round(report["real_tokens"] / (report["real_tokens"] + 36 * len(text_only)), 4) < 1
    pack = packed[0]
    assert [len(s["input_ids"]) for s in pack] == [abs(ds.lengths[i]) for i in packed.packs[0]]
    assert sum("pixel_values" in s for s in pack) <= 2


def test_finetuning_packs_by_default_and_pretraining_pads():
    from firellava.config import build
    from tests.conftest import compose_config

    train = build(compose_config("experiment=firellava_13b").train)
    assert train.finetune.packing and not train.pretrain.packing
    assert (train.finetune.pack_length or train.finetune.max_length) >= train.finetune.max_length
    off = build(compose_config("experiment=firellava_13b", "train.finetune.packing=false").train)
    assert not off.finetune.packing and off.finetune.group_by_modality_length  # LLaVA's batches


def test_the_cpu_demo_trains_on_random_batches_in_padding_free_rows():
    """Batches of like length slowed the toy LLM's learning: the demo's are random, each in one row."""
    from firellava.config import build
    from tests.conftest import compose_config

    train = build(compose_config("experiment=demo").train)
    for stage in (train.pretrain, train.finetune):
        assert stage.padding_free and not stage.packing and not stage.group_by_modality_length
    with pytest.raises(Exception, match="set one of packing, padding_free"):  # through Hydra's instantiate
        build(compose_config("experiment=demo", "train.finetune.packing=true").train)
