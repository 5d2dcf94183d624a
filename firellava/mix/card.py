"""The mix's data card: the manifest in words, for the people who decide whether the data may be used."""

from __future__ import annotations

from typing import Any

from firellava.core.records import SCHEMA
from firellava.mix import decontam, terms

REASONS = {
    "noncommercial": "source's license does not allow commercial use",
    "invalid": "record failed schema validation",
    "missing_image": "image file missing",
    "undecodable_image": "image file does not decode",
    "eval_overlap": "image is one a benchmark evaluates on",
    "near_duplicate": "generated record near-duplicates another source's record of the same image",
    "quota": "left out by the quotas / target total",
}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _near_duplicate_lines(nd: dict[str, Any]) -> list[str]:
    lines = ["## Near-duplicates", ""]
    if not nd["enabled"]:
        return lines + ["Not checked (`mix.near_duplicates.enabled=false`).", ""]
    return lines + [
        f"{nd['removed']:,} generated records removed: each near-duplicated a record of another source for the "
        f"same image (Jaccard similarity >= {nd['threshold']} over {nd['shingle_words']}-word shingles, MinHash "
        f"LSH with {nd['num_perm']} permutations); {nd['generated_checked']:,} generated and "
        f"{nd['permissive_checked']:,} other records on {nd['shared_images']:,} shared images were compared. "
        "Near-duplicates within the generated data were removed by the datagen stage (its data card).",
        "",
    ]


def _generated_check_lines(g: dict[str, Any] | None) -> list[str]:
    lines = ["## Grounding of the generated records", ""]
    if g is None:
        return lines + [
            "Not available: the generated records came without the datagen stage's `stats.json`.",
            "",
        ]
    rows = [
        [
            kind,
            f"{t['records']:,}",
            t["chair_i"],
            t["chair_s"],
            f"{t['count_claims']:,}",
            f"{t['count_mismatches']:,}",
        ]
        for kind, t in [*g["per_type"].items(), ("all", g["overall"])]
    ]
    rejected = ", ".join(f"{reason} {n:,}" for reason, n in g["rejected"].items())
    examples = [
        f'- {kind} `{e["id"]}`: "{e["phrase"]}" -> {e["category"]} ({e["what"]})'
        for kind, t in g["per_type"].items()
        for e in t["examples"]
    ]
    return lines + [
        "The datagen stage checked every generated answer's object mentions and stated counts against the image's "
        "COCO annotations (CHAIR_i: hallucinated / mentioned categories; CHAIR_s: records with any) and rejected "
        f"records with CHAIR_i above {g['max_hallucination_rate']} or more than {g['max_count_mismatches']} wrong "
        f"count(s). Rates are over every checked record, kept or rejected; rejected there: {rejected}.",
        "",
        _table(["type", "records", "CHAIR_i", "CHAIR_s", "count claims", "count mismatches"], rows),
        "",
        *(["Caught mentions (examples):", "", *examples, ""] if examples else []),
    ]


def render_datacard(manifest: dict[str, Any]) -> str:
    sources = manifest["sources"]
    rows = [
        [
            f"`{name}`",
            s["license"],
            "yes" if s["commercial_use"] else "**no**",
            f"{s['in_input']:,}",
            f"{s['selected']:,}",
        ]
        for name, s in sources.items()
    ]
    excluded_rows = [
        [REASONS.get(reason, reason), f"`{name}`", f"{n:,}"]
        for reason, per_source in manifest["excluded"].items()
        for name, n in per_source.items()
        if n
    ]
    inputs = [
        [f["role"], f"`{f['path']}`", f.get("records", ""), f"`{f['sha256']}`"] for f in manifest["inputs"]
    ]
    notes = [f"- `{name}`: {s['note']}" for name, s in sources.items() if s.get("note")]
    images = manifest["images"]
    out = manifest["output"]
    parts = [
        "# FireLLaVA instruction mix: data card",
        "",
        f"**{manifest['total']:,} records** in `{out['path']}` (LLaVA JSON list; sha256 `{out['sha256']}`).",
        "",
        "## Commercial use",
        "",
        manifest["commercial_use"]["statement"],
        "",
        "## Sources",
        "",
        "Records of the LLaVA-1.5 665K mix carry no source field; each was assigned exactly one source by the "
        "rules of the source registry (`conf/mix/sources/`). Generated records come from the datagen stage.",
        "",
        _table(["source", "license", "commercial use", "in input", "selected"], rows),
        "",
        *(["License notes:", "", *notes, ""] if notes else []),
        "## Excluded records",
        "",
        _table(["reason", "source", "records"], excluded_rows) if excluded_rows else "None.",
        "",
        *terms.render_section(manifest.get("training_terms")),
        *decontam.render_section(manifest.get("decontamination")),
        *_near_duplicate_lines(manifest.get("near_duplicates", {"enabled": False})),
        *_generated_check_lines(manifest.get("generated_checks")),
        "## Validation",
        "",
        f"Every selected record has the LLaVA schema: {SCHEMA}; and its image file passed the "
        f"`{images['check']}` check "
        f"({images['distinct_images']:,} distinct images; digest `{images['digest']}`).",
        "",
        "## Inputs",
        "",
        _table(["role", "path", "records", "sha256"], inputs),
        "",
        "## Reproduce",
        "",
        f"Seed {manifest['seed']}, target total "
        f"{manifest['target_total'] if manifest['target_total'] is not None else 'none (every permitted record)'}; "
        "the full configuration is in "
        '`manifest.json` under `config`. Run `make mix ARGS="..."` with the same overrides.',
        "",
    ]
    return "\n".join(parts)
