"""Raw generations -> the stage's files: `<type>.jsonl` (LLaVA records), `rejected.jsonl` (every reject with its
reason and raw text), `stats.json` and `DATACARD.md`. All written to temporary names and renamed."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firellava.core.io import atomic_path, write_json, write_jsonl
from firellava.core.neardup import NearDupIndex
from firellava.core.records import SCHEMA, conversation, make_record
from firellava.datagen.contexts import TYPES, ImageContext
from firellava.datagen.grounding import GroundingCheck, GroundingTally
from firellava.datagen.parse import (
    REJECT_REASONS,
    ParseRules,
    Rejected,
    dedup_key,
    parse_generation,
)
from firellava.datagen.prompts import PromptSet

SOURCE = "firellava_generated"


@dataclass(frozen=True)
class Provenance:
    model: str
    license: str
    commercial_use: bool


def build_records(
    rows: Sequence[Mapping[str, Any]],
    contexts: Mapping[int, ImageContext],
    image_prefix: str,
    provenance: Provenance,
    rules: ParseRules,
    grounding: GroundingCheck | None = None,
    tally: GroundingTally | None = None,
    near: dict[str, NearDupIndex] | None = None,
) -> tuple[dict[str, list[dict]], list[dict]]:
    """Parse every raw generation in work order. Exact duplicates (after the first) are rejected; then records
    that fail the grounding check; then near-duplicates of a record kept before them (per type)."""
    records: dict[str, list[dict]] = {t: [] for t in TYPES}
    rejected: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for row in rows:
        kind = row["type"]
        try:
            pairs = parse_generation(kind, row["text"], row["finish_reason"], rules, row.get("question"))
            key = (kind, dedup_key(pairs))
            if key in seen:
                raise Rejected("duplicate", "same conversation as an earlier record")
            seen.add(key)
            if grounding is not None:
                g = grounding.check(row["image_id"], [a for _, a in pairs])
                if tally is not None:
                    tally.add(kind, row["id"], g)
                verdict = grounding.verdict(g)
                if verdict is not None:
                    raise Rejected(*verdict)
            if near is not None:
                match = near[kind].keep_first(row["id"], "\n".join(t for pair in pairs for t in pair))
                if match is not None:
                    raise Rejected("near_duplicate", f"Jaccard ~{match[1]:.2f} with {match[0]}")
        except Rejected as r:
            rejected.append(
                {"id": row["id"], "type": kind, "reason": r.reason, "detail": str(r), "text": row["text"]}
            )
            continue
        file_name = contexts[row["image_id"]].file_name
        records[kind].append(
            make_record(
                row["id"],
                conversation(pairs, image=True),
                image=f"{image_prefix}/{file_name}" if image_prefix else file_name,
                source=SOURCE,
                license=provenance.license,
                model=provenance.model,
                type=kind,
            )
        )
    return records, rejected


def compute_stats(
    rows: Sequence[Mapping[str, Any]],
    records: Mapping[str, list[dict]],
    rejected: Sequence[Mapping[str, Any]],
    requested: Mapping[str, int],
    prefix: Mapping[str, Mapping[str, float]],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    by_reason: dict[str, Counter] = {t: Counter() for t in TYPES}
    for r in rejected:
        by_reason[r["type"]][r["reason"]] += 1
    chunk_seconds = {r["chunk"]: r["chunk_seconds"] for r in rows}
    seconds = sum(chunk_seconds.values())
    per_type = {}
    for kind in TYPES:
        mine = [r for r in rows if r["type"] == kind]
        prompt_tokens = sum(r["prompt_tokens"] for r in mine)
        per_type[kind] = {
            "requested": requested.get(kind, 0),
            "generated": len(mine),
            "parsed": len(records[kind]),
            "rejected": {reason: by_reason[kind][reason] for reason in REJECT_REASONS},
            "prompt_tokens": prompt_tokens,
            "output_tokens": sum(r["completion_tokens"] for r in mine),
            **prefix.get(kind, {}),
        }
    prompt_tokens = sum(p["prompt_tokens"] for p in per_type.values())
    output_tokens = sum(p["output_tokens"] for p in per_type.values())
    shared = sum(p.get("shared_prefix_fraction", 0.0) * p["prompt_tokens"] for p in per_type.values())
    return {
        "requested": sum(requested.values()),
        "generated": len(rows),
        "parsed": sum(len(v) for v in records.values()),
        "rejected": {reason: sum(by_reason[t][reason] for t in TYPES) for reason in REJECT_REASONS},
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "generation_seconds": round(seconds, 3),
        "output_tokens_per_s": round(output_tokens / seconds, 2) if seconds else None,
        "total_tokens_per_s": round((prompt_tokens + output_tokens) / seconds, 2) if seconds else None,
        "shared_prefix_fraction": round(shared / prompt_tokens, 4) if prompt_tokens else None,
        "per_type": per_type,
        **extra,
    }


def _grounding_lines(g: Mapping[str, Any]) -> list[str]:
    lines = ["## Grounding", ""]
    if not g.get("enabled"):
        return lines + ["The grounding check was off (`data_gen.grounding.enabled=false`).", ""]
    lines += [
        "Every answer's object mentions are mapped to the annotation file's categories "
        f"({g['categories']}) and checked against the image's instance annotations and reference captions "
        "(CHAIR-style; rules in docs/DESIGN.md). CHAIR_i: hallucinated / mentioned categories; CHAIR_s: share of "
        "records with any hallucinated category. A record is rejected when its own CHAIR_i exceeds "
        f"{g['max_hallucination_rate']} or it states more than {g['max_count_mismatches']} wrong count(s); the "
        "rates below are over every checked record, kept or rejected.",
        "",
        "| type | records | mentions | hallucinated | CHAIR_i | CHAIR_s | count claims | count mismatches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, t in [*g["per_type"].items(), ("all", g["overall"])]:
        lines.append(
            f"| {kind} | {t['records']} | {t['mentions']} | {t['hallucinated']} | {t['chair_i']} "
            f"| {t['chair_s']} | {t['count_claims']} | {t['count_mismatches']} |"
        )
    examples = [(kind, e) for kind, t in g["per_type"].items() for e in t["examples"]]
    lines += ["", "Caught mentions (examples):" if examples else "No mention was caught.", ""]
    for kind, e in examples:
        annotated = f", annotated {e['annotated']}" if "annotated" in e else ""
        lines.append(
            f'- {kind} `{e["id"]}`: "{e["phrase"]}" -> {e["category"]} ({e["what"]}{annotated}) in '
            f'"{e["clause"]}"'
        )
    return lines + [""]


def _near_duplicate_lines(stats: Mapping[str, Any]) -> list[str]:
    nd = stats["near_duplicates"]
    if not nd["enabled"]:
        return ["Near-duplicate removal was off (`data_gen.near_duplicates.enabled=false`).", ""]
    return [
        f"Near-duplicates removed: {stats['rejected']['near_duplicate']} (MinHash LSH, per type: Jaccard "
        f"similarity >= {nd['threshold']} over {nd['shingle_words']}-word shingles of the whole conversation, "
        "estimated with "
        f"{nd['num_perm']} permutations; the first record in work order is kept).",
        "",
    ]


def _sample(records: Mapping[str, list[dict]], kind: str) -> str:
    if not records[kind]:
        return "_(no record of this type)_"
    return "```json\n" + json.dumps(records[kind][0], indent=2, ensure_ascii=False) + "\n```"


def datacard(stats: Mapping[str, Any], records: Mapping[str, list[dict]], prompts: PromptSet) -> str:
    t = stats["teacher"]
    lines = [
        "# FireLLaVA generated visual instruction data",
        "",
        "LLaVA-Instruct-style conversations written by an open, text-only LLM that reads COCO captions (and, for "
        "detailed description and complex reasoning, object boxes normalized to [0, 1]). No GPT-4 output is "
        "involved, so the data carries only the teacher's license.",
        "",
        "## Provenance",
        "",
        f"- teacher model: `{t['model']}`",
        f"- teacher license: `{t['license']}`; commercial use allowed: **{t['commercial_use']}**",
        f"- record `source`: `{SOURCE}`; images: COCO ({stats['coco']['images']} captioned images; "
        f"{stats['coco']['images_without_captions']} without captions skipped)",
        f"- prompt set: `{prompts.name}`; sampling: `{json.dumps(stats['sampling'])}`",
        f"- seed {stats['seed']}, shard {stats['shard']['index']} of {stats['shard']['count']}",
        "",
        "## Counts",
        "",
        "| type | requested | generated | parsed | rejected | shared-prefix fraction |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, p in stats["per_type"].items():
        lines.append(
            f"| {kind} | {p['requested']} | {p['generated']} | {p['parsed']} | {sum(p['rejected'].values())} "
            f"| {p.get('shared_prefix_fraction', '-')} |"
        )
    lines += ["", "Rejected, by reason (every reject is kept in `rejected.jsonl` with its raw text):", ""]
    lines += [f"- {reason}: {n}" for reason, n in stats["rejected"].items()]
    lines += ["", *_grounding_lines(stats["grounding"]), *_near_duplicate_lines(stats)]
    lines += [
        "",
        f"Tokens: {stats['prompt_tokens']} prompt, {stats['output_tokens']} output; "
        f"{stats['output_tokens_per_s']} output tokens/s over {stats['generation_seconds']} s of generation.",
        "",
        "## Format",
        "",
        f"One JSON object per line in the LLaVA schema: {SCHEMA}; plus `source`, `license`, `model`, `type`.",
        "",
    ]
    for kind in TYPES:
        lines += [
            f"### {kind}",
            "",
            "System message:",
            "",
            "> " + prompts.system[kind].replace("\n", "\n> "),
            "",
        ]
        lines += ["Example record:", "", _sample(records, kind), ""]
    lines += [
        "## Limitations",
        "",
        "- The teacher never sees the image: answers are only as good as the captions and boxes, and may "
        "state plausible details that are not in the photo.",
        "- Filters check format, truncation, leaked coordinates or sources and duplicates; the only facts checked "
        "are which COCO categories the answers name and the counts they state (the grounding check): colours, "
        "positions, actions and anything outside the 80 categories are not checked.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: Path,
    records: Mapping[str, list[dict]],
    rejected: Sequence[Mapping[str, Any]],
    stats: Mapping[str, Any],
    prompts: PromptSet,
) -> None:
    for kind in TYPES:
        write_jsonl(out_dir / f"{kind}.jsonl", records[kind])
    write_jsonl(out_dir / "rejected.jsonl", rejected)
    write_json(out_dir / "stats.json", stats)
    with atomic_path(out_dir / "DATACARD.md") as tmp:
        tmp.write_text(datacard(stats, records, prompts), encoding="utf-8")
