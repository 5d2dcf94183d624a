"""The datagen stage: COCO captions (+ boxes) -> LLaVA-Instruct-style conversations from an open, text-only LLM.

`run(cfg)` builds the `data_gen`, `teacher`, `engine.teacher` and `paths` specs; `generate_dataset` below never
sees a DictConfig. Outputs under `paths.datagen_dir` (or its `shard-i-of-n/` for one shard of many):
`conversation.jsonl`, `detail.jsonl`, `complex_reasoning.jsonl`, `rejected.jsonl`, `stats.json`, `DATACARD.md`,
and `parts/` (raw generations, the resume journal).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from firellava.config import build
from firellava.core.decontam import DecontamSpec, excluded_coco_ids
from firellava.core.neardup import NearDupIndex, NearDupSpec
from firellava.core.terms import TrainingTerms
from firellava.core.tracking import active_run, flat_numbers
from firellava.datagen.contexts import TYPES, load_contexts, select_work
from firellava.datagen.generate import (
    check_manifest,
    chunks,
    generate_chunks,
    manifest,
    prompt_for,
    read_parts,
    shard_work,
)
from firellava.datagen.grounding import GroundingCheck, GroundingSpec, GroundingTally
from firellava.datagen.outputs import Provenance, build_records, compute_stats, write_outputs
from firellava.datagen.parse import FILTER_REASONS, ParseRules
from firellava.datagen.prefix import shared_prefix
from firellava.datagen.prompts import prompt_set
from firellava.engines import Engine, EngineSpec, SamplingParams, build_engine, close_engine
from firellava.paths import Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatagenSpec:
    counts: dict[str, int]
    prompt_set: str = "llava"
    box_decimals: int = 3
    seed: int = 42
    shard_index: int = 0
    num_shards: int = 1
    chunk_size: int = 256  # generations per committed part; also the batch handed to the engine at once
    stop: list[str] = field(default_factory=list)
    prefix_sample: int = 32  # prompts per type tokenized to measure the shared prefix
    overwrite: bool = False
    rules: ParseRules = field(default_factory=ParseRules)
    grounding: GroundingSpec = field(default_factory=GroundingSpec)
    near_duplicates: NearDupSpec = field(default_factory=NearDupSpec)
    decontamination: DecontamSpec | None = None  # images the benchmarks evaluate on are not selected
    wandb_samples: int = 8  # sample conversations per type in the wandb table (when the pipeline tracks)

    def __post_init__(self) -> None:
        unknown = set(self.counts) - set(TYPES)
        if unknown:
            raise ValueError(f"data_gen.counts has unknown type(s) {sorted(unknown)}; known: {list(TYPES)}")


@dataclass(frozen=True)
class Teacher:
    """The `teacher` config group: the model that writes the conversations and its license (how it runs is
    engine.teacher)."""

    model: str
    license: str
    commercial_use: bool
    name: str | None = None
    max_model_len: int | None = None  # the context engine.teacher reserves (its options interpolate this)
    # what its outputs may train (the mix carries it to the finetune stage)
    terms: TrainingTerms | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.model


@dataclass(frozen=True)
class Sources:
    coco_instances: str
    coco_captions: str
    coco_images: str
    image_folder: str

    @classmethod
    def of(cls, paths: Paths) -> Sources:
        return cls(paths.coco_instances, paths.coco_captions, paths.coco_images, paths.image_folder)

    def image_prefix(self) -> str:
        rel = os.path.relpath(Path(self.coco_images).resolve(), Path(self.image_folder).resolve())
        if rel.startswith(".."):
            raise ValueError(
                f"paths.coco_images {self.coco_images} is not under paths.image_folder {self.image_folder}"
            )
        return "" if rel == "." else Path(rel).as_posix()


def output_dir(datagen_dir: str | Path, spec: DatagenSpec) -> Path:
    base = Path(datagen_dir)
    if spec.num_shards == 1:
        return base
    return base / f"shard-{spec.shard_index:05d}-of-{spec.num_shards:05d}"


def _teacher_tokenizer(engine: Engine | None, teacher: Teacher) -> Any:
    if engine is not None and hasattr(engine, "tokenizer"):
        return engine.tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(teacher.model)


def generate_dataset(
    spec: DatagenSpec,
    teacher: Teacher,
    sources: Sources,
    engine_factory: Callable[[], Engine],
    params: SamplingParams,
    out_dir: Path,
) -> dict[str, Any]:
    start = time.perf_counter()
    out_dir = Path(out_dir).resolve()
    prompts = prompt_set(spec.prompt_set)
    coco = load_contexts(sources.coco_instances, sources.coco_captions)
    image_prefix = sources.image_prefix()
    eval_ids = excluded_coco_ids(spec.decontamination)
    candidates = [i for i in coco.contexts if i not in eval_ids]
    excluded = len(coco.contexts) - len(candidates)
    work = shard_work(select_work(candidates, spec.counts, spec.seed), spec.shard_index, spec.num_shards)
    todo = chunks(work, spec.chunk_size)
    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    check_manifest(
        parts,
        manifest(
            teacher=teacher.model,
            prompt_set=prompts.name,
            sampling=params,
            counts=spec.counts,
            seed=spec.seed,
            shard=[spec.shard_index, spec.num_shards],
            chunk_size=spec.chunk_size,
            box_decimals=spec.box_decimals,
            coco=[str(sources.coco_instances), str(sources.coco_captions)],
            excluded_eval_images=excluded,
        ),
        spec.overwrite,
    )
    built: list[Engine] = []

    def engine_once() -> Engine:
        if not built:
            log.info("datagen: loading teacher %s", teacher.display_name)
            built.append(engine_factory())
        return built[0]

    try:
        run_info = generate_chunks(
            todo,
            coco.contexts,
            engine_once,
            params,
            prompts,
            parts,
            box_decimals=spec.box_decimals,
            seed=spec.seed,
            rules=spec.rules,
        )
    finally:
        for engine in built:
            close_engine(engine)
    rows = read_parts(parts, todo)
    provenance = Provenance(teacher.display_name, teacher.license, teacher.commercial_use)
    grounding = (
        GroundingCheck(spec.grounding, coco.contexts, coco.categories) if spec.grounding.enabled else None
    )
    tally = GroundingTally(TYPES, spec.grounding.examples)
    near = {t: NearDupIndex(spec.near_duplicates) for t in TYPES} if spec.near_duplicates.enabled else None
    records, rejected = build_records(
        rows, coco.contexts, image_prefix, provenance, spec.rules, grounding, tally, near
    )
    by_type = {
        kind: [
            prompt_for(w, coco.contexts[w.image_id], prompts, spec.box_decimals)
            for w in work
            if w.type == kind
        ][: spec.prefix_sample]
        for kind in TYPES
    }
    prefix = shared_prefix(_teacher_tokenizer(built[0] if built else None, teacher), by_type)
    requested = {kind: sum(w.type == kind for w in work) for kind in TYPES}
    stats = compute_stats(
        rows,
        records,
        rejected,
        requested,
        prefix,
        extra={
            "teacher": {
                "model": teacher.display_name,
                "license": teacher.license,
                "commercial_use": teacher.commercial_use,
            },
            "prompt_set": prompts.name,
            "sampling": asdict(params),
            "seed": spec.seed,
            "shard": {"index": spec.shard_index, "count": spec.num_shards},
            "coco": {
                "images": len(coco.contexts),
                "images_without_captions": len(coco.without_captions),
                # not selected because a configured benchmark evaluates on them (by COCO id)
                "excluded_eval_images": excluded,
            },
            "this_run": {k: round(v, 3) if isinstance(v, float) else v for k, v in run_info.items()},
            "grounding": {
                **asdict(spec.grounding),
                "categories": len(coco.categories),
                **(tally.summary() if spec.grounding.enabled else {}),
            },
            "near_duplicates": asdict(spec.near_duplicates),
        },
    )
    write_outputs(out_dir, records, rejected, stats, prompts)
    run = active_run()
    if run is not None:
        _log_wandb(run, spec.wandb_samples, stats, records)
    log.info(
        "datagen: %d requested, %d generated, %d parsed, rejected %s -> %s",
        stats["requested"],
        stats["generated"],
        stats["parsed"],
        {k: v for k, v in stats["rejected"].items() if v},
        out_dir,
    )
    failed = sum(n for reason, n in stats["rejected"].items() if reason not in FILTER_REASONS)
    return {
        "dir": str(out_dir),
        "requested": stats["requested"],
        "generated": stats["generated"],
        "parsed": stats["parsed"],
        "rejected": stats["rejected"],
        # The parser's acceptance rate: duplicates and ungrounded records parse fine; later filters left them out.
        "parse_rate": round(1 - failed / stats["generated"], 4) if stats["generated"] else None,
        "per_type": {k: v["parsed"] for k, v in stats["per_type"].items()},
        "excluded_eval_images": excluded,  # COCO images left out because a benchmark evaluates on them
        "grounding": _grounding_summary(stats["grounding"]),
        "near_duplicates": stats["rejected"]["near_duplicate"],
        "shared_prefix_fraction": stats["shared_prefix_fraction"],
        "output_tokens_per_s": stats["output_tokens_per_s"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def _grounding_summary(g: Mapping[str, Any]) -> dict[str, Any] | None:
    """CHAIR rates and count mismatches per type, for summary.json (examples stay in stats.json)."""
    if not g.get("enabled"):
        return None
    keys = ("records", "chair_i", "chair_s", "count_claims", "count_mismatches")
    return {
        "overall": {k: g["overall"][k] for k in keys},
        **{kind: {k: t[k] for k in keys} for kind, t in g["per_type"].items()},
    }


def _log_wandb(run: Any, samples: int, stats: Mapping[str, Any], records: Mapping[str, list[dict]]) -> None:
    import wandb

    flat = flat_numbers({k: v for k, v in stats.items() if k != "this_run"})
    run.log(flat)
    table = wandb.Table(columns=["id", "type", "conversation"])
    for kind in TYPES:
        for r in records[kind][:samples]:
            text = "\n\n".join(f"{t['from']}: {t['value']}" for t in r["conversations"])
            table.add_data(r["id"], kind, text)
    run.log({"samples": table})


def teacher_sampling(engine: EngineSpec, spec: DatagenSpec) -> SamplingParams:
    """The teacher's sampling with data_gen's stop strings (a run-on guard tied to the prompt set) and seed."""
    return replace(engine.sampling, stop=tuple(spec.stop), seed=spec.seed)


def run(cfg) -> dict[str, Any]:
    spec: DatagenSpec = build(cfg.data_gen)
    teacher: Teacher = build(cfg.teacher)
    engine: EngineSpec = build(cfg.engine.teacher)
    paths: Paths = build(cfg.paths)

    def factory() -> Engine:
        return build_engine(engine, teacher.model, teacher.display_name)

    params = teacher_sampling(engine, spec)
    return generate_dataset(
        spec, teacher, Sources.of(paths), factory, params, output_dir(paths.datagen_dir, spec)
    )
