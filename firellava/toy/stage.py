"""The toy world stage: everything the toy run needs, under `<output_dir>/toy_world/`, in the layouts of the real
files, so that every production stage reads it from config paths exactly as it reads the real thing:

- `data/`: COCO annotations and images, the 665K-style mix with all ten sources and its reference files,
  the toy benchmarks in the benchmarks' own layouts (`data/eval/`), and a demo image for the serve stage;
- `pretrain/`: the LCS-558K-style pretraining file and images;
- `models/`: a tokenizer, a pretrained tiny CLIP tower and tiny Llama, and the trained toy teacher (copied
  from the model cache when `toy_world.cache_dir` holds them for the same config and code).

Built in a temporary directory and moved into place when complete."""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firellava.config import build
from firellava.core.chat_format import DEFAULT_SYSTEM
from firellava.core.io import staged_dir
from firellava.eval.benchmarks import BENCHMARKS
from firellava.toy.benchmarks import write_toy_benchmarks
from firellava.toy.data import ToyData, build_toy_data
from firellava.toy.llm_pretrain import LlmPretrainSpec
from firellava.toy.model_cache import entry_dir, model_key, restore, store
from firellava.toy.scenes import draw_scene, sample_scene
from firellava.toy.teacher import ToyTeacherSpec, train_toy_teacher
from firellava.toy.tiny_models import LlmSizes, VisionSizes, build_tiny_models
from firellava.toy.vision_pretrain import VisionPretrainSpec

log = logging.getLogger(__name__)

DEMO_IMAGE = "serve_demo.png"
MODEL_DIRS = {"tokenizer": "tokenizer", "vision_tower": "vision", "llm": "llm", "teacher": "teacher"}


@dataclass(frozen=True)
class ToyWorldSpec:
    seed: int
    coco_images: int
    pretrain_images: int
    per_source: dict[str, int]  # records per source in the 665K-style mix
    vocab_size: int
    vision: VisionSizes
    llm: LlmSizes
    vision_pretrain: VisionPretrainSpec  # 0 steps: the tower stays random
    llm_pretrain: LlmPretrainSpec  # 0 steps: the LLM stays random
    teacher: ToyTeacherSpec
    benchmark_questions: int  # per toy benchmark
    overwrite: bool = False
    # Content-addressed cache of the pretrained models (`model_cache`); None: off.
    cache_dir: str | None = None


def corpus(data: ToyData) -> Iterator[str]:
    """Every string the toy world wrote, plus the text a chat example carries besides its turns, as often as the
    model reads it: the system prompt once per chat record, ` ASSISTANT:` once per answer. Trained on the turns
    alone, the tokenizer split the system prompt into far more pieces than Llama-2's does, and most of a
    finetune sequence was system prompt and role markers (docs/experiments.md section 22). `USER` stays out: as in Llama's
    vocabulary `▁USER` must be one piece longer than `USER` after `</s>`, which LLaVA's masking relies on."""
    for record in json.loads(Path(data.coco_captions).read_text())["annotations"]:
        yield record["caption"]
    for record in json.loads(Path(data.pretrain_json).read_text()):
        for turn in record["conversations"]:
            yield turn["value"]
    for record in json.loads(Path(data.mix665k_json).read_text()):
        yield DEFAULT_SYSTEM
        for turn in record["conversations"]:
            yield turn["value"]
            if turn["from"] == "gpt":
                yield " ASSISTANT:"


def write_demo_image(path: Path, seed: int) -> Path:
    """A fresh toy scene for the serve stage's one request."""
    draw_scene(sample_scene(random.Random(seed), 0)).save(path, format="PNG")
    return path


def _models(models_dir: Path, spec: ToyWorldSpec, data: ToyData) -> tuple[dict[str, Path], dict, dict]:
    """The pretrained models under `models_dir`, from the cache when it holds them (`model_cache`), else
    trained (and stored there). Returns their paths, their record (probe figures, teacher training) and what the
    cache did."""
    key = model_key(spec) if spec.cache_dir else None
    record = restore(spec.cache_dir, key, models_dir) if key else None
    if record is None:
        # The teacher needs the toy tokenizer only, so it trains beside the LLM, after the tower.
        train_teacher = functools.partial(
            train_toy_teacher, spec.teacher, out_dir=models_dir / "teacher", seed=spec.seed
        )
        _, probes, teacher = build_tiny_models(
            corpus(data),
            models_dir,
            spec.vocab_size,
            spec.vision,
            spec.llm,
            spec.seed,
            spec.vision_pretrain,
            spec.llm_pretrain,
            reads_tokenizer=train_teacher,
        )
        record = {"probes": probes, "teacher": teacher}
        if key:
            store(spec.cache_dir, key, models_dir, record)
        cache = {"key": key, "hit": False}
    else:
        log.info("toy models from the cache: %s", entry_dir(spec.cache_dir, key))
        record["teacher"]["dir"] = str(models_dir / "teacher")
        cache = {"key": key, "hit": True}
    if key:
        cache["dir"] = str(entry_dir(spec.cache_dir, key))
    models = {name: models_dir / sub for name, sub in MODEL_DIRS.items()}
    return models, record, cache


def build_toy_world(out_dir: Path, spec: ToyWorldSpec) -> dict[str, Any]:
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    with staged_dir(out_dir, overwrite=spec.overwrite, hint=" (toy_world.overwrite=true)") as tmp:
        data = build_toy_data(
            tmp,
            seed=spec.seed,
            coco_images=spec.coco_images,
            pretrain_images=spec.pretrain_images,
            per_source=dict(spec.per_source),
        )
        log.info("toy data written in %.1fs: %s", time.perf_counter() - start, data.counts)
        models, record, cache = _models(tmp / "models", spec, data)
        benchmarks = write_toy_benchmarks(
            tmp / "data" / "eval",
            list(BENCHMARKS),
            seed=spec.seed,
            questions=spec.benchmark_questions,
            shared=data.coco_scenes[:3],
        )
        summary = data.summary()
        summary["models"] = {name: str(path) for name, path in models.items()}
        summary["vision_probe"] = record["probes"]["vision"]
        summary["llm_probe"] = record["probes"]["llm"]
        summary["teacher_training"] = record["teacher"]
        summary["model_cache"] = cache
        summary["benchmarks"] = benchmarks
        summary["demo_image"] = str(write_demo_image(tmp / "data" / DEMO_IMAGE, spec.seed))
    # Paths in the summary point at the final location, not the staging directory.
    summary = json.loads(json.dumps(summary).replace(str(tmp), str(out_dir)))
    summary["dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def run(cfg) -> dict[str, Any]:
    return build_toy_world(Path(cfg.paths.output_dir) / "toy_world", build(cfg.toy_world))
