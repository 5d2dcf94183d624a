"""Where stages read and write: the `paths` config group (conf/paths/)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paths:
    output_dir: str
    summary: str
    data_root: str
    coco_instances: str
    coco_captions: str
    coco_images: str
    pretrain_json: str
    pretrain_images: str
    mix665k_json: str
    image_folder: str
    datagen_dir: str
    mix_dir: str
    pretrain_dir: str
    finetune_dir: str
    eval_dir: str
    serve_dir: str
    toy_models: str | None = None  # the toy world's tiny models (experiment demo)
