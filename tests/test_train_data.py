"""Training data: label masks, image expansion and truncation, bad input, images, collator, sampler, batch plan."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from PIL import Image

from firellava.core.chat_format import IGNORE_INDEX
from firellava.train.data import Collator, DataError, EncodingSpec, LlavaDataset, encode_record
from firellava.train.loss import predicts_a_label, supervised_cross_entropy
from firellava.train.sampler import modality_length_grouped_indices
from firellava.train.spec import batch_plan
from firellava.train.worker import consume_local_rank

SEQ = 36  # image tokens per image in the test spec


def conv(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def spec(tokenizer) -> EncodingSpec:
    return EncodingSpec("vicuna_v1", 2048, tokenizer.convert_tokens_to_ids("<image>"), SEQ)


def supervised(tokenizer, labels) -> list[str]:
    """The supervised spans, each decoded on its own with its leading space (after a BOS: Llama's decoder, the toy
    tokenizer's too, strips one leading space from the decoded string)."""
    spans, cur = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            cur.append(label)
        elif cur:
            spans.append(tokenizer.decode([tokenizer.bos_token_id, *cur])[len(tokenizer.bos_token) :])
            cur = []
    return spans


def test_multi_turn_labels_are_answers_and_eos(tokenizer, spec):
    record = {
        "id": "r1",
        "image": "x.jpg",
        "conversations": conv(
            "What color is the circle?\n<image>",
            "red",
            "How many shapes are there?",
            "two",
            "And squares?",
            "none",
        ),
    }
    ids, labels, truncated = encode_record(record, tokenizer, spec, "r1")
    assert not truncated and len(ids) == len(labels)
    assert supervised(tokenizer, labels) == [" red</s>", " two</s>", " none</s>"]
    image = [i for i, t in enumerate(ids) if t == spec.image_token_id]
    assert len(image) == SEQ and image == list(range(image[0], image[0] + SEQ))  # one contiguous block
    assert all(labels[i] == IGNORE_INDEX for i in image)


def test_text_only_and_plain_labels(tokenizer, spec):
    ids, labels, _ = encode_record(
        {"id": "t", "conversations": conv("Hi there", "Hello.", "Bye", "Bye.")}, tokenizer, spec, "t"
    )
    assert spec.image_token_id not in ids
    assert supervised(tokenizer, labels) == [" Hello.</s>", " Bye.</s>"]
    plain = EncodingSpec("plain", 2048, spec.image_token_id, SEQ)
    record = {"id": "p", "image": "x.jpg", "conversations": conv("Describe it.\n<image>", "a red circle")}
    ids, labels, _ = encode_record(record, tokenizer, plain, "p")
    # The caption is tokenized on its own after the image, as in LLaVA, so it starts at a word boundary.
    assert supervised(tokenizer, labels) == [" a red circle\n"]
    assert ids[0] == tokenizer.bos_token_id and ids[1 : 1 + SEQ] == [spec.image_token_id] * SEQ


def test_truncation_keeps_image_whole_or_refuses(tokenizer, spec):
    record = {"id": "long", "image": "x.jpg", "conversations": conv("<image>\nQ?", "a b c d e f g h i j")}
    full, _, _ = encode_record(record, tokenizer, spec, "long")
    image_end = max(i for i, t in enumerate(full) if t == spec.image_token_id) + 1
    cut = EncodingSpec("vicuna_v1", image_end + 5, spec.image_token_id, SEQ)
    ids, labels, truncated = encode_record(record, tokenizer, cut, "long")
    assert truncated and len(ids) == image_end + 5 and ids.count(spec.image_token_id) == SEQ
    short = EncodingSpec("vicuna_v1", image_end - 1, spec.image_token_id, SEQ)
    with pytest.raises(DataError, match=r"long.*too short to hold the image"):
        encode_record(record, tokenizer, short, "record 'long'")


def write_world(tmp_path, records, images=("a.png",)):
    folder = tmp_path / "img"
    folder.mkdir()
    for name in images:
        Image.new("RGB", (60, 30), (220, 30, 30)).save(folder / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path, folder


def dataset(tiny_llava, path, folder, max_length=2048, aspect="pad", template="vicuna_v1"):
    model, processor = tiny_llava
    spec = EncodingSpec(template, max_length, model.config.image_token_id, model.config.image_seq_length)
    return LlavaDataset(
        path, folder, processor.tokenizer, processor.image_processor, spec, image_aspect_ratio=aspect
    )


def test_bad_input_names_record_and_field(tmp_path, tiny_llava):
    records = [
        {"id": "ok", "image": "a.png", "conversations": conv("<image>\nQ?", "A.")},
        {"id": "gone", "image": "missing.png", "conversations": conv("<image>\nQ?", "A.")},
        {"id": "noconv", "image": "a.png"},
        {"id": "badrole", "conversations": [{"from": "robot", "value": "x"}]},
        "not a record",
    ]
    path, folder = write_world(tmp_path, records)
    with pytest.raises(DataError) as err:
        dataset(tiny_llava, path, folder)
    msg = str(err.value)
    assert "4 bad record(s)" in msg and str(path) in msg
    assert "'gone'" in msg and "field 'image': file not found" in msg
    assert "'noconv'" in msg and "field 'conversations'" in msg
    assert "'badrole'" in msg and "'#4'" in msg


def test_bad_input_short_max_length_and_unreadable_files_name_the_record(tmp_path, tiny_llava):
    records = [{"id": "img", "image": "a.png", "conversations": conv("<image>\nQ?", "A.")}]
    path, folder = write_world(tmp_path, records)
    # At scan time, before any step: the image's tokens cannot fit, whatever is cut after them.
    with pytest.raises(DataError) as err:
        dataset(tiny_llava, path, folder, max_length=SEQ)
    msg = str(err.value)
    assert f"1 bad record(s) in {path}" in msg
    assert f"{path}: record 'img' (index 0): max_length {SEQ} is too short to hold the image" in msg

    # Not an image at all: the scan opens every image's header, so this too fails before any step.
    (folder / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        dataset(tiny_llava, path, folder)
    assert f"{path}: record 'img' (index 0): field 'image': cannot read {folder / 'a.png'}" in str(err.value)

    # A sound header over pixel data cut short passes the scan and fails when its batch loads.
    noise = Image.frombytes("RGB", (60, 30), random.Random(0).randbytes(60 * 30 * 3))
    noise.save(folder / "a.png")
    (folder / "a.png").write_bytes((folder / "a.png").read_bytes()[:2000])
    ds = dataset(tiny_llava, path, folder)
    with pytest.raises(
        DataError, match=rf"{re.escape(str(path))}: record 'img': field 'image': cannot read "
    ):
        ds[0]

    path.write_text(json.dumps(records)[:-5])  # cut off mid-record
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: invalid JSON at line 1, column "):
        dataset(tiny_llava, path, folder)


def test_fully_masked_records_are_counted_and_left_out(tmp_path, tiny_llava):
    model, _ = tiny_llava
    records = [
        {"id": "fits", "image": "a.png", "conversations": conv("<image>\nQ?", "A.")},
        {"id": "masked", "image": "a.png", "conversations": conv("<image>\n" + "word " * 80, "A.")},
        {"id": "text", "conversations": conv("Hello?", "Hi.")},
    ]
    path, folder = write_world(tmp_path, records)
    probe = EncodingSpec("vicuna_v1", 10_000, model.config.image_token_id, model.config.image_seq_length)
    fits = len(encode_record(records[0], tiny_llava[1].tokenizer, probe, "fits")[0])
    ds = dataset(tiny_llava, path, folder, max_length=fits)
    assert ds.ids == ["fits", "text"]
    assert ds.report.fully_masked == ["masked"] and ds.report.as_dict()["kept"] == 2
    assert ds.lengths[0] > 0 > ds.lengths[1]  # the sampler's modality sign
    assert "pixel_values" in ds[0] and "pixel_values" not in ds[1]


def test_pad_to_square_versus_centre_crop(tmp_path, tiny_llava):
    path, folder = write_world(
        tmp_path, [{"id": "w", "image": "a.png", "conversations": conv("<image>\nQ?", "A.")}]
    )
    pad = dataset(tiny_llava, path, folder, aspect="pad")[0]["pixel_values"]
    crop = dataset(tiny_llava, path, folder, aspect="square")[0]["pixel_values"]
    assert pad.shape == crop.shape and pad.shape[1] == pad.shape[2]
    # A wide red image: padding adds CLIP-mean rows above and below (normalized ~0); the crop is all red.
    assert pad[:, 0, :].abs().max() < 0.05
    assert (crop[0] > 1.0).all()


def test_collator_pads_labels_and_adds_an_image_row_only_when_needed():
    col = Collator(pad_token_id=7, image_token_id=9, image_seq_length=4, image_shape=(3, 8, 8))
    text = [
        {"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3])},
        {"input_ids": torch.tensor([1, 5]), "labels": torch.tensor([-100, 5])},
    ]
    batch = col(text)
    assert batch["input_ids"].shape == (3, 4)  # a third row of image tokens keeps the vision tower running
    assert batch["input_ids"][2].tolist() == [9, 9, 9, 9] and (batch["labels"][2] == IGNORE_INDEX).all()
    assert batch["labels"][1].tolist() == [-100, 5, -100, -100] and batch["input_ids"][1, 2:].tolist() == [
        7,
        7,
    ]
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0]
    assert batch["pixel_values"].shape == (1, 3, 8, 8) and batch["pixel_values"].abs().sum() == 0
    mixed = col(
        [
            text[0],
            {
                "input_ids": torch.tensor([1, 9, 9, 9, 9]),
                "labels": torch.full((5,), -100),
                "pixel_values": torch.ones(3, 8, 8),
            },
        ]
    )
    assert mixed["input_ids"].shape == (2, 5) and mixed["pixel_values"].shape == (1, 3, 8, 8)


def test_modality_sampler_single_modality_batches_balanced_across_ranks():
    g = torch.Generator().manual_seed(0)
    lengths = [10 + i for i in range(37)] + [-(5 + i) for i in range(21)]
    batch, world = 4, 2
    order = modality_length_grouped_indices(lengths, batch, world, g)
    assert sorted(order) == list(range(len(lengths)))
    mega = batch * world
    # LLaVA puts both modalities' leftovers (5 + 5 here) together at the end; every batch before is pure.
    tail = 37 % mega + 21 % mega
    globals_ = [order[i : i + mega] for i in range(0, len(order) - tail, mega)]
    assert len(globals_) == 6 and all(len({lengths[i] > 0 for i in m}) == 1 for m in globals_)
    assert len({lengths[i] > 0 for i in order[-tail:]}) == 2
    for m in globals_:
        ranks = [m[:batch], m[batch:]]
        sums = [sum(abs(lengths[i]) for i in r) for r in ranks]
        assert max(sums) - min(sums) <= max(abs(lengths[i]) for i in m)
    assert Counter(lengths[i] > 0 for i in order) == Counter(x > 0 for x in lengths)


def test_padding_free_rows_take_random_global_batches_dealt_evenly_to_ranks():
    import dataclasses

    from firellava.config import build
    from firellava.train.stage import sampler_lengths
    from tests.conftest import compose_config

    spec = build(compose_config("experiment=demo").train).finetune
    lengths = [100 + (i * 37) % 200 for i in range(40)] + [-(50 + i) for i in range(8)]
    assert sampler_lengths(spec, lengths) == [abs(x) for x in lengths]  # one modality: no grouping by it
    padded = dataclasses.replace(spec, padding_free=False)
    assert sampler_lengths(padded, lengths) is None  # the Trainer's own shuffle
    grouped = dataclasses.replace(padded, group_by_modality_length=True)
    assert sampler_lengths(grouped, lengths) == lengths
    packed = dataclasses.replace(grouped, packing=True)
    assert sampler_lengths(packed, lengths) is None  # the packs' own seeded shuffle

    batch, world = 4, 2
    mega = batch * world
    order = modality_length_grouped_indices(
        [abs(x) for x in lengths], batch, world, torch.Generator().manual_seed(0)
    )
    shuffle = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    for k in range(0, len(lengths), mega):
        step = order[k : k + mega]
        # Each global batch is the plain shuffle's, with and without an image alike.
        assert sorted(step) == sorted(shuffle[k : k + mega])
        sums = [sum(abs(lengths[i]) for i in r) for r in (step[:batch], step[batch:])]
        assert max(sums) - min(sums) <= max(abs(lengths[i]) for i in step)


def test_batch_plan_and_local_rank(monkeypatch):
    # consume_local_rank sets LOCAL_RANK for the worker; in this process it would make later Trainers distributed
    monkeypatch.setenv("LOCAL_RANK", "")  # recorded, so that teardown removes what the calls below set
    monkeypatch.delenv("LOCAL_RANK")
    plan = batch_plan(128, 16, 8)
    assert plan.accumulation == 1 and "128 = per-device 16 x accumulation 1 x world size 8" in plan.describe()
    assert batch_plan(256, 32, 2).accumulation == 4
    with pytest.raises(ValueError, match="not a multiple"):
        batch_plan(100, 16, 8)
    assert consume_local_rank(["w", "--local_rank=1", "a=b"]) == ["w", "a=b"]
    assert consume_local_rank(["w", "--local_rank", "0", "x=y"]) == ["w", "x=y"]
    assert os.environ["LOCAL_RANK"] == "1"  # the first one set it; setdefault keeps a launcher's value


LEAVE = """
import logging, sys, torch, torch.distributed as dist
from firellava.train.worker import leave
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
dist.all_reduce(torch.ones(1))
logging.getLogger("w").info("logged before leaving")
print("printed before leaving", end="")  # no newline: only an explicit flush writes it to the pipe
leave()
print("never reached")
"""


def test_a_finished_worker_leaves_with_status_0_and_its_output_flushed(tmp_path):
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", LEAVE, str(store)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "logged before leaving\nprinted before leaving"


def test_records_longer_than_max_length_are_named_before_training(tmp_path, tiny_llava, caplog):
    model, processor = tiny_llava
    records = [
        {"id": "fits", "image": "a.png", "conversations": conv("<image>\nQ?", "A.")},
        {"id": "long", "image": "a.png", "conversations": conv("<image>\nQ?", "A long answer " * 20)},
    ]
    path, folder = write_world(tmp_path, records)
    probe = EncodingSpec("vicuna_v1", 10_000, model.config.image_token_id, model.config.image_seq_length)
    fits = len(encode_record(records[0], processor.tokenizer, probe, "fits")[0])
    with caplog.at_level("WARNING"):
        ds = dataset(tiny_llava, path, folder, max_length=fits + 3)
    assert ds.ids == ["fits", "long"] and ds.report.truncated == ["long"]
    assert ds.report.as_dict()["truncated"] == 1 and ds.report.as_dict()["truncated_ids"] == ["long"]
    assert "1 kept record(s)" in caplog.text and "['long']" in caplog.text


def test_the_lm_head_on_supervised_positions_gives_hf_s_loss_and_gradient(tmp_path, tiny_llava):
    """The stages' loss (train/loss.py): logits only where the next token is supervised, then HF's cross-entropy
    over the accumulated batch's supervised tokens. Loss and gradient equal HF's loss on every position (a padded
    batch with several rounds, an image after the question, a text-only row)."""
    model, processor = tiny_llava
    records = [
        {"id": "a", "image": "a.png", "conversations": conv("<image>\nWhat colour?", "Red.", "And?", "Big.")},
        {"id": "b", "image": "a.png", "conversations": conv("Q?<image>", "A long answer of several words.")},
        {"id": "c", "conversations": conv("Hello?", "Hi.")},
    ]
    path, folder = write_world(tmp_path, records)
    ds = dataset(tiny_llava, path, folder)
    config = model.config
    size = config.vision_config.image_size
    collate = Collator(
        processor.tokenizer.pad_token_id, config.image_token_id, config.image_seq_length, (3, size, size)
    )
    batch = collate([ds[i] for i in range(3)])
    # part of the accumulated batch, as the Trainer counts it over all micro-batches and ranks
    items = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) + 5
    was_training = model.training  # the model is the session's: left as found
    model.train()

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = model(**batch, num_items_in_batch=items).loss
    expected = grads(reference)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    outputs = model(**inputs, logits_to_keep=predicts_a_label(batch["labels"]))
    loss = supervised_cross_entropy(outputs, batch["labels"], num_items_in_batch=torch.tensor(items))
    assert outputs.logits.shape[0] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    got = grads(loss)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    mean = supervised_cross_entropy(
        model(**inputs, logits_to_keep=predicts_a_label(batch["labels"])), batch["labels"]
    )
    torch.testing.assert_close(mean, model(**batch).loss, rtol=1e-5, atol=1e-7)  # no count: HF's mean
    with pytest.raises(ValueError, match="logits_to_keep"):
        supervised_cross_entropy(model(**inputs), batch["labels"])
    model.zero_grad(set_to_none=True)
    model.train(was_training)
