"""One training stage inside one launcher process: model, data, HF Trainer + DeepSpeed, outputs from rank 0."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from firellava.core.model_builder import ModelSpec, build_llava
from firellava.core.progress import Progress
from firellava.train.data import Collator, EncodingSpec, LlavaDataset, image_fields
from firellava.train.export import (
    RESULT_FILE,
    TRAINER_STATE,
    group_of,
    load_projector,
    save_card,
    save_model_dir,
    save_projector,
    set_use_cache,
    write_outputs,
)
from firellava.train.loss import predicts_a_label, supervised_cross_entropy
from firellava.train.packing import PackedDataset, PackingCollator, PaddingFreeCollator
from firellava.train.sampler import ModalityLengthGroupedSampler, SeededShuffleSampler
from firellava.train.spec import PARAM_GROUPS, BatchPlan, StageSpec, batch_plan, packs_per_device
from firellava.train.varlen_attention import use_varlen_attention

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"


class LlavaTrainer(Trainer):
    """HF Trainer plus LLaVA's modality-length grouped sampler, or a seeded shuffle of packs; with
    `supervised_head`, the LM head runs on supervised positions only (train/loss.py)."""

    def __init__(
        self,
        *args: Any,
        modality_lengths: list[int] | None = None,
        packed: bool = False,
        supervised_head: bool = False,
        **kwargs: Any,
    ) -> None:
        if supervised_head:
            kwargs["compute_loss_func"] = supervised_cross_entropy
        super().__init__(*args, **kwargs)
        self.modality_lengths = modality_lengths
        self.packed = packed

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.compute_loss_func is supervised_cross_entropy:
            inputs = {**inputs, "logits_to_keep": predicts_a_label(inputs["labels"])}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        if self.packed:
            return SeededShuffleSampler(len(train_dataset or self.train_dataset), seed=self.args.seed)
        if self.modality_lengths is None:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            self.modality_lengths,
            batch_size=self.args.train_batch_size,
            # One megabatch is one global batch, accumulation included (LLaVA passes world x accumulation).
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.seed,
        )


class StartStep(TrainerCallback):
    """The global step training starts from: 0 for a fresh run, the checkpoint's step for a resumed one."""

    step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


class ProgressLines(TrainerCallback):
    """A line on rank 0 at most every ~10 s: step/total, steps/s, ETA, the latest loss. It replaces HF's
    PrinterCallback (a raw dict every `logging_steps`, which is a flood at 1 and silence at 200)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress = Progress(
                self.stage, state.max_steps, unit="steps", logger=log, start=state.global_step
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress and logs and "loss" in logs:
            self.progress.extra = f"loss {logs['loss']:.4g}"

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(state.global_step - self.progress.done)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.close()


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest `checkpoint-N` that was completely written, or None.

    HF writes a checkpoint in place and its trainer_state.json last, so a run killed while saving leaves a
    newer directory without it. Resuming from that one would load half-written optimizer state, or (with
    trainer_state.json missing) restart the step count at 0 on top of the loaded weights.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted(
        (int(d.name.rpartition("-")[2]), d)
        for d in checkpoints.iterdir()
        if d.is_dir()
        and d.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
        and d.name.rpartition("-")[2].isdigit()
    )
    for _, d in reversed(found):
        if (d / "trainer_state.json").is_file():
            return str(d)
        log.warning("%s is incomplete (no trainer_state.json, the run stopped while saving it); skipped", d)
    return None


def set_trainable(model: Any, trainable: list[str]) -> dict[str, int]:
    """Freeze everything but the named groups; returns trainable parameter counts per group."""
    counts = dict.fromkeys(PARAM_GROUPS, 0)
    for name, param in model.named_parameters():
        group = group_of(name)
        param.requires_grad_(group in trainable)
        if group in trainable:
            counts[group] += param.numel()
    return counts


def fingerprints(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """A hash of every tensor's bytes: exact, so 'unchanged' means bit-identical."""
    out = {}
    for name, tensor in state_dict.items():
        data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        out[name] = hashlib.blake2b(data, digest_size=16).hexdigest()
    return out


def changed_tensors(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list[int]]:
    """Per group: [tensors that changed, tensors in the group]."""
    report = {g: [0, 0] for g in PARAM_GROUPS}
    for name, digest in before.items():
        group = group_of(name)
        report[group][1] += 1
        report[group][0] += after.get(name) != digest
    return report


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(
    spec: StageSpec,
    plan: BatchPlan,
    ds_config: dict[str, Any],
    checkpoints: Path,
    cuda: bool,
    per_device_items: int | None = None,
) -> TrainingArguments:
    """`per_device_items`: what one micro-batch holds of the dataset's items (packs), if not samples."""
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=per_device_items or spec.per_device_batch_size,
        gradient_accumulation_steps=plan.accumulation,
        num_train_epochs=spec.epochs,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=spec.weight_decay,
        bf16=spec.bf16 and cuda,  # fp32 on CPU
        tf32=spec.tf32 and cuda,
        gradient_checkpointing=spec.gradient_checkpointing,
        logging_steps=spec.logging_steps,
        save_strategy="steps",
        save_steps=spec.save_steps,
        save_total_limit=spec.save_total_limit,
        report_to=list(spec.report_to) or "none",
        deepspeed=ds_config,
        use_cpu=not cuda,
        remove_unused_columns=False,
        dataloader_num_workers=spec.dataloader_num_workers,
        seed=spec.seed,
        disable_tqdm=True,
    )


def sampler_lengths(spec: StageSpec, lengths: list[int]) -> list[int] | None:
    """The lengths LLaVA's grouped sampler deals each global batch by, or None for the Trainer's own shuffle.

    Packs need no grouping: best-fit made their lengths even already. Padding-free rows take the sampler with
    one modality: random global batches, each dealt to the ranks by length. Padded, the slowest rank pads to the
    batch's longest sample however the batch is dealt; without padding, each rank computes its own tokens.
    """
    if spec.packing:
        return None
    if spec.group_by_modality_length:
        return lengths
    if spec.padding_free:
        return [abs(x) for x in lengths]
    return None


def train_stage(
    stage: str,
    spec: StageSpec,
    model_spec: ModelSpec,
    ds_config: dict[str, Any],
    *,
    overwrite: bool = False,
    card: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Run one stage; rank 0 writes the outputs and returns the result, other ranks return None. `card`: the
    model card's facts, written with a finetuned model (with the training run added)."""
    rank, world = _world()
    cuda = torch.cuda.is_available()
    out = Path(spec.output_dir).resolve()
    if (out / RESULT_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{out} holds a finished {stage} run ({RESULT_FILE}); pass train.overwrite=true"
        )
    plan = batch_plan(spec.global_batch_size, spec.per_device_batch_size, world)
    if rank == 0:
        log.info("%s: %s (ZeRO-%d, %s)", stage, plan.describe(), spec.zero_stage, "GPU" if cuda else "CPU")

    # Build before TrainingArguments: once those name a ZeRO-3 config, from_pretrained would partition the
    # parts while build_llava copies their weights. DeepSpeed partitions the assembled model itself.
    torch.manual_seed(spec.seed)  # the fresh projector is the same on every rank
    dtype = model_spec.dtype if cuda else "float32"
    model, processor = build_llava(
        dataclasses.replace(model_spec, image_aspect_ratio=spec.image_aspect_ratio, dtype=dtype)
    )
    if cuda and spec.flash_attention:
        model.set_attn_implementation("flash_attention_2")
    elif spec.packing or spec.padding_free:
        use_varlen_attention(model)
    if spec.projector:
        load_projector(model, spec.projector)
    counts = set_trainable(model, spec.trainable)
    set_use_cache(model, False)  # the Trainer passes no use_cache
    if spec.gradient_checkpointing:
        model.enable_input_require_grads()
    before = fingerprints(model.state_dict()) if rank == 0 else {}
    if rank == 0:
        log.info("trainable parameters per group: %s", counts)

    config = model.config
    encoding = EncodingSpec(
        template=spec.template,
        max_length=spec.max_length,
        image_token_id=config.image_token_id,
        image_seq_length=config.image_seq_length,
        system=spec.system,
    )
    dataset = LlavaDataset(
        spec.data_json,
        spec.image_folder,
        processor.tokenizer,
        processor.image_processor,
        encoding,
        image_aspect_ratio=spec.image_aspect_ratio,
    )
    image = image_fields(config)
    train_data, packing, per_device_items = dataset, None, None
    if spec.packing:
        train_data = PackedDataset(
            dataset,
            dataset.lengths,
            spec.pack_length or spec.max_length,
            spec.pack_images,
            per_device=lambda samples_per_pack: packs_per_device(
                spec.per_device_batch_size, samples_per_pack
            ),
            devices_per_step=world * plan.accumulation,
            image_seq_length=config.image_seq_length,
        )
        packing = train_data.report.as_dict()
        per_device_items = train_data.packs_per_device
        collator = PackingCollator(**image)
        if rank == 0:
            log.info("packing: %s", packing)
    elif spec.padding_free:
        collator = PaddingFreeCollator(**image)
    else:
        collator = Collator(pad_token_id=processor.tokenizer.pad_token_id, **image)
    checkpoints = out / CHECKPOINTS
    args = training_arguments(spec, plan, ds_config, checkpoints, cuda, per_device_items)
    start_step = StartStep()
    trainer = LlavaTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        data_collator=collator,
        callbacks=[start_step, ProgressLines(stage)],
        modality_lengths=sampler_lengths(spec, dataset.lengths),
        packed=spec.packing,
        supervised_head=spec.supervised_head,
    )
    trainer.remove_callback(PrinterCallback)
    resume = None if overwrite else last_complete_checkpoint(checkpoints)
    if rank == 0 and resume:
        log.info("resuming %s from %s", stage, resume)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start

    # Every rank takes part in gathering (ZeRO-3 partitions the weights); only rank 0 writes.
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if rank != 0:
        return None
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "stage": stage,
        "dir": str(out),
        "steps": trainer.state.global_step,
        "final_loss": round(float(losses[-1]), 4) if losses else None,
        "first_loss": round(float(losses[0]), 4) if losses else None,
        # The Trainer counts its items (packs, when packing): converted to samples.
        "samples_per_s": round(
            float(output.metrics.get("train_samples_per_second", 0.0))
            * (packing["samples_per_pack"] if packing else 1.0),
            2,
        ),
        "train_seconds": round(seconds, 1),
        "zero_stage": spec.zero_stage,
        # What ran, which on CPU is not what a GPU config asks for (fp32, no flash-attn there).
        "runtime": {
            "device": "cuda" if cuda else "cpu",
            "bf16": args.bf16,
            "tf32": bool(args.tf32),
            "gradient_checkpointing": model.is_gradient_checkpointing,
            "attn_implementation": model.get_decoder().config._attn_implementation,  # the language model's
        },
        "batch": dataclasses.asdict(plan),
        "data": dataset.report.as_dict(),
        "packing": packing,
        "trainable_params": counts,
        "changed_tensors": changed_tensors(before, fingerprints(state_dict)),
        "resumed_from": resume,
        "start_step": start_step.step,
    }
    if stage == "finetune" and card is not None:
        result["terms"] = card["terms"]["statement"]

    def write(tmp: Path) -> None:
        # The loss curve and the rest of the log history, which no checkpoint holds when none was saved.
        trainer.state.save_to_json(str(tmp / TRAINER_STATE))
        if stage == "pretrain":
            save_projector(tmp, state_dict, model)
        else:
            save_model_dir(tmp, state_dict, model, processor)
            if card is not None:
                save_card(tmp, card, result)

    write_outputs(out, write, result)
    log.info("%s done: %s", stage, result)
    return result
