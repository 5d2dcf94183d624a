"""Typed arguments of the training stages (the `train` and `deepspeed` config groups, and the job the launcher
hands its workers), and the batch arithmetic derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from firellava.core.model_builder import ModelSpec

STAGE_NAMES = ("pretrain", "finetune")
PARAM_GROUPS = ("vision_tower", "projector", "llm")


@dataclass(frozen=True)
class StageSpec:
    """One stage of `conf/train/*.yaml` (`train.pretrain` or `train.finetune`)."""

    data_json: str
    image_folder: str
    output_dir: str
    template: str
    image_aspect_ratio: str
    trainable: list[str]
    zero_stage: int
    global_batch_size: int
    per_device_batch_size: int
    learning_rate: float
    epochs: float
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_length: int = 2048
    bf16: bool = False
    tf32: bool = False
    gradient_checkpointing: bool = False
    flash_attention: bool = False
    group_by_modality_length: bool = False
    # The LM head on supervised positions only, with HF's loss (train/loss.py); false: HF's loss on every position.
    supervised_head: bool = True
    # Several samples per row, no padding (train.packing); the batch sizes above still count samples: a
    # micro-batch holds as many packs as make about per_device_batch_size samples. Replaces the grouping.
    packing: bool = False
    pack_length: int | None = None  # tokens one pack holds (samples are cut to max_length); None: max_length
    pack_images: int | None = None  # images one pack may hold besides its tokens; None: no limit
    # Each micro-batch's samples in one row without padding (what `packing` does to its packs), from random
    # global batches dealt to the ranks by length so that each computes about as many tokens. The samples and
    # the loss are a padded batch's; the padding's compute is gone, and the ranks wait less for each other.
    padding_free: bool = False
    projector: str | None = None  # finetune: the pretrained projector weights to start from
    system: str | None = None  # vicuna_v1 system prompt; None = LLaVA's default
    save_steps: int = 50000
    save_total_limit: int = 1
    logging_steps: int = 1
    dataloader_num_workers: int = 0
    report_to: list[str] = field(default_factory=list)
    seed: int = 42

    def __post_init__(self) -> None:
        unknown = [g for g in self.trainable if g not in PARAM_GROUPS]
        if unknown or not self.trainable:
            raise ValueError(f"trainable={self.trainable}; choose among {list(PARAM_GROUPS)}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage={self.zero_stage}; DeepSpeed ZeRO stages are 0-3")
        if self.image_aspect_ratio not in ("pad", "square"):
            raise ValueError(f"image_aspect_ratio={self.image_aspect_ratio!r}; supported: pad, square")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ValueError(
                f"pack_length={self.pack_length} is below max_length={self.max_length}: a sample must fit"
            )
        if self.packing and self.padding_free:
            raise ValueError("packing already makes padding-free rows; set one of packing, padding_free")
        if self.pack_images is not None and self.pack_images < 1:
            raise ValueError(f"pack_images={self.pack_images}; a pack must hold at least one image (or null)")


@dataclass(frozen=True)
class TrainSpec:
    """The `train` config group: where the processes run, and one StageSpec per stage."""

    pretrain: StageSpec
    finetune: StageSpec
    num_gpus: int = 8  # processes per node (on a machine without CUDA: CPU processes)
    num_nodes: int = 1
    hostfile: str | None = None
    master_port: int | None = None  # None: a free port
    overwrite: bool = False  # a finished stage directory is refused unless true; an unfinished one resumes
    # finetune on data whose licence terms do not allow model.family (train/terms.py); logged, and in the card
    allow_terms_override: bool = False

    def stage(self, name: str) -> StageSpec:
        if name not in STAGE_NAMES:
            raise ValueError(f"train stage {name!r}; choose one of {list(STAGE_NAMES)}")
        return getattr(self, name)


@dataclass(frozen=True)
class DeepSpeedSpec:
    """The `deepspeed` config group: one DeepSpeed config per ZeRO stage a training stage may ask for."""

    zero0: dict[str, Any] | None = None
    zero1: dict[str, Any] | None = None
    zero2: dict[str, Any] | None = None
    zero3: dict[str, Any] | None = None

    def config(self, zero_stage: int) -> dict[str, Any]:
        found = getattr(self, f"zero{zero_stage}", None)
        if found is None:
            have = [f"zero{n}" for n in range(4) if getattr(self, f"zero{n}") is not None]
            raise KeyError(f"deepspeed.zero{zero_stage} is not configured (conf/deepspeed/); have {have}")
        return found


@dataclass(frozen=True)
class WorkerJob:
    """What every training process runs: the launcher writes it as a config node, each worker builds it."""

    stage: str
    spec: StageSpec
    model: ModelSpec
    deepspeed: dict[str, Any]
    overwrite: bool = False
    card: dict[str, Any] | None = (
        None  # finetune: the model card's facts (core/model_card.py), written with it
    )


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    per_device_batch_size: int
    world_size: int
    accumulation: int

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch_size} = per-device {self.per_device_batch_size} x accumulation "
            f"{self.accumulation} x world size {self.world_size}"
        )


def packs_per_device(per_device_batch_size: int, samples_per_pack: float) -> int:
    """Packs per micro-batch that carry about the configured samples, so a step trains on about as many."""
    return max(1, round(per_device_batch_size / samples_per_pack))


def batch_plan(global_batch_size: int, per_device_batch_size: int, world_size: int) -> BatchPlan:
    """The config fixes the global batch; accumulation makes up what devices x per-device batch do not."""
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"global batch {global_batch_size} is not a multiple of per-device batch {per_device_batch_size} x "
            f"world size {world_size} = {per_step}; change train.<stage>.per_device_batch_size or the GPU count"
        )
    return BatchPlan(global_batch_size, per_device_batch_size, world_size, global_batch_size // per_step)
