"""The generation loop: work items -> prompts -> engine -> raw generations, committed chunk by chunk.

Resumability: the work list is fixed by the seed and split into fixed chunks; each chunk's raw generations are
written to `parts/<type>-<chunk>.jsonl` under a temporary name and renamed when the whole chunk is done. A rerun
(also after SIGKILL) skips finished chunks, so it re-runs exactly the unfinished chunks with the same batch
composition, and the final records are a pure function of the parts. A `parts/manifest.json` records what the
parts were made with; a rerun with different settings is refused rather than mixed in.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from firellava.core.instructions import DETAIL_INSTRUCTIONS
from firellava.core.io import iter_jsonl, read_json, write_json, write_jsonl
from firellava.core.progress import Progress
from firellava.datagen.contexts import USES_BOXES, ImageContext, WorkItem, format_context
from firellava.datagen.parse import ParseRules, Rejected, parse_generation
from firellava.datagen.prompts import PromptSet
from firellava.engines import Engine, Prompt, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    type: str
    index: int
    items: tuple[WorkItem, ...]

    @property
    def name(self) -> str:
        return f"{self.type}-{self.index:06d}"


def shard_work(work: Sequence[WorkItem], shard_index: int, num_shards: int) -> list[WorkItem]:
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"data_gen.shard_index={shard_index} must be in [0, num_shards={num_shards})")
    return [w for i, w in enumerate(work) if i % num_shards == shard_index]


def chunks(work: Sequence[WorkItem], size: int) -> list[Chunk]:
    """Per type, consecutive runs of `size` items; a type's prompts stay together so the prefix stays cached."""
    out = []
    for kind in dict.fromkeys(w.type for w in work):
        items = [w for w in work if w.type == kind]
        out += [Chunk(kind, i // size, tuple(items[i : i + size])) for i in range(0, len(items), size)]
    return out


def detail_question(item_id: str, seed: int) -> str:
    return random.Random(f"datagen/{seed}/{item_id}/question").choice(DETAIL_INSTRUCTIONS)


def prompt_for(item: WorkItem, ctx: ImageContext, prompts: PromptSet, box_decimals: int) -> Prompt:
    context = format_context(ctx, USES_BOXES[item.type], box_decimals)
    return Prompt(messages=prompts.messages(item.type, context))


def check_manifest(parts_dir: Path, manifest: Mapping[str, Any], overwrite: bool) -> None:
    path = parts_dir / "manifest.json"
    if path.exists() and not overwrite:
        old = read_json(path)
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise FileExistsError(
                f"{parts_dir} holds generations made with other settings ({', '.join(diff)} differ); "
                "use another paths.datagen_dir or data_gen.overwrite=true"
            )
        return
    if path.exists():
        for part in parts_dir.glob("*.jsonl"):
            part.unlink()
    write_json(path, dict(manifest))


def finished_chunks(parts_dir: Path) -> set[str]:
    return {p.stem for p in parts_dir.glob("*.jsonl")}


def generate_chunks(
    todo: Sequence[Chunk],
    contexts: Mapping[int, ImageContext],
    engine_factory: Callable[[], Engine],
    params: SamplingParams,
    prompts: PromptSet,
    parts_dir: Path,
    *,
    box_decimals: int,
    seed: int,
    rules: ParseRules,
) -> dict[str, float]:
    """Run the chunks not yet in `parts_dir`; the engine is built only if there is work left."""
    done = finished_chunks(parts_dir)
    pending = [c for c in todo if c.name not in done]
    total = sum(len(c.items) for c in pending)
    log.info("datagen: %d of %d chunks left (%d generations)", len(pending), len(todo), total)
    if not pending:
        return {"generations": 0, "seconds": 0.0, "output_tokens": 0}
    engine = engine_factory()
    start = time.perf_counter()
    # A chunk is one engine call: a line after each, however long it took.
    progress = Progress("datagen", total, unit="generations", every_s=0.0, logger=log)
    n_done = tokens = parsed = 0
    for chunk in pending:
        batch = [prompt_for(item, contexts[item.image_id], prompts, box_decimals) for item in chunk.items]
        t0 = time.perf_counter()
        try:
            gens = engine.generate(batch, params)
        except Exception as e:
            raise RuntimeError(
                f"engine {engine.model_name} failed on chunk {chunk.name} (ids {chunk.items[0].id} .. "
                f"{chunk.items[-1].id}); the {len(finished_chunks(parts_dir))} finished chunks in "
                f"{parts_dir} are kept and a rerun resumes from here"
            ) from e
        seconds = time.perf_counter() - t0
        if len(gens) != len(batch):
            raise RuntimeError(f"engine returned {len(gens)} generations for {len(batch)} prompts")
        rows = []
        for item, gen in zip(chunk.items, gens):
            row = {
                "id": item.id,
                "type": item.type,
                "image_id": item.image_id,
                "chunk": chunk.name,
                "text": gen.text,
                "finish_reason": gen.finish_reason,
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "chunk_seconds": round(seconds, 4),
            }
            if item.type == "detail":
                row["question"] = detail_question(item.id, seed)
            try:
                parse_generation(item.type, gen.text, gen.finish_reason, rules, row.get("question"))
                parsed += 1
            except Rejected:
                pass
            rows.append(row)
            tokens += gen.completion_tokens
        write_jsonl(parts_dir / f"{chunk.name}.jsonl", rows)
        n_done += len(chunk.items)
        elapsed = time.perf_counter() - start
        progress.update(
            len(chunk.items),
            f"chunk {chunk.name}, {100 * parsed / n_done:.0f}% parse, {tokens / elapsed:.1f} output tok/s",
        )
    return {"generations": n_done, "seconds": time.perf_counter() - start, "output_tokens": tokens}


def read_parts(parts_dir: Path, todo: Sequence[Chunk]) -> list[dict[str, Any]]:
    """All raw generations in work order; a part that does not match its chunk is an error, not a skip."""
    rows = []
    for chunk in todo:
        path = parts_dir / f"{chunk.name}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path}: chunk not generated")
        got = [row for _, row, _ in iter_jsonl(path)]
        ids = [r.get("id") for r in got]
        expected = [w.id for w in chunk.items]
        if ids != expected:
            raise ValueError(f"{path}: ids {ids[:3]}... do not match the chunk's work {expected[:3]}...")
        rows += got
    return rows


def manifest(**kwargs: Any) -> dict[str, Any]:
    """JSON-comparable description of what a run's parts depend on."""
    return json.loads(
        json.dumps({k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in kwargs.items()})
    )
