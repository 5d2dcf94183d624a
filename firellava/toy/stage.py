"""The toy world stage: seeded data in every format the pipeline reads, plus tiny models, under
`<output_dir>/toy_world/`. Built in a temporary directory and moved into place when complete."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate

from firellava.core.io import staged_dir
from firellava.toy.data import DEFAULT_PER_SOURCE, ToyData, build_toy_data
from firellava.toy.llm_pretrain import LlmPretrainSpec
from firellava.toy.tiny_models import TinySizes, build_tiny_models
from firellava.toy.vision_pretrain import VisionPretrainSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToyWorldSpec:
    seed: int = 42
    coco_images: int = 120
    pretrain_images: int = 240
    per_source: dict[str, int] | None = None
    overwrite: bool = False
    vocab_size: int = 1024
    image_size: int = 48
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    llm_hidden: int = 128
    llm_layers: int = 4
    llm_heads: int = 8
    vision_pretrain_steps: int = 2000
    llm_pretrain_steps: int = 1600

    @property
    def sizes(self) -> TinySizes:
        return TinySizes(
            vocab_size=self.vocab_size,
            image_size=self.image_size,
            patch_size=self.patch_size,
            vision_hidden=self.vision_hidden,
            vision_layers=self.vision_layers,
            llm_hidden=self.llm_hidden,
            llm_intermediate=self.llm_hidden * 8 // 3,
            llm_layers=self.llm_layers,
            llm_heads=self.llm_heads,
        )


def corpus(data: ToyData) -> Iterator[str]:
    """Every string the toy world wrote: the tokenizer learns the world's own vocabulary."""
    for record in json.loads(Path(data.coco_captions).read_text())["annotations"]:
        yield record["caption"]
    for path in (data.pretrain_json, data.mix665k_json):
        for record in json.loads(Path(path).read_text()):
            for turn in record["conversations"]:
                yield turn["value"]


def build_toy_world(out_dir: Path, spec: ToyWorldSpec) -> dict[str, Any]:
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    with staged_dir(out_dir, overwrite=spec.overwrite, hint=" (toy_world.overwrite=true)") as tmp:
        data = build_toy_data(
            tmp,
            seed=spec.seed,
            coco_images=spec.coco_images,
            pretrain_images=spec.pretrain_images,
            per_source=dict(spec.per_source or DEFAULT_PER_SOURCE),
        )
        log.info("toy data written in %.1fs: %s", time.perf_counter() - start, data.counts)
        models, probes = build_tiny_models(
            corpus(data),
            tmp / "models",
            spec.sizes,
            spec.seed,
            VisionPretrainSpec(steps=spec.vision_pretrain_steps),
            LlmPretrainSpec(steps=spec.llm_pretrain_steps),
        )
        summary = data.summary()
        summary["models"] = {name: str(path) for name, path in models.items()}
        summary["vision_probe"] = probes["vision"]
        summary["llm_probe"] = probes["llm"]
    # Paths in the summary point at the final location, not the staging directory.
    summary = json.loads(json.dumps(summary).replace(str(tmp), str(out_dir)))
    summary["dir"] = str(out_dir)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    return summary


def run(cfg) -> dict[str, Any]:
    spec = instantiate(cfg.toy_world, _convert_="all")
    return build_toy_world(Path(cfg.paths.output_dir) / "toy_world", spec)
