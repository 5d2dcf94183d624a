"""What the datagen stage's filters found in the generated records the mix reads: its grounding rates and its
rejects by filter, read from each datagen directory's `stats.json` (one per shard) and summed, so the mix's
manifest and data card carry them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from firellava.core.chair import TOTALS, chair_rates
from firellava.core.io import read_json

FILTERS = ("hallucination", "count_mismatch", "near_duplicate", "duplicate")
EXAMPLES = 3


def read_generated_checks(datagen_dirs: Iterable[Path]) -> dict[str, Any] | None:
    """None when no directory has a `stats.json` with grounding figures (e.g. records written by hand)."""
    stats = [read_json(p) for p in (Path(d) / "stats.json" for d in datagen_dirs) if p.is_file()]
    stats = [s for s in stats if s.get("grounding", {}).get("enabled")]
    if not stats:
        return None
    per_type: dict[str, dict[str, int]] = {}
    examples: dict[str, list] = {}
    for s in stats:
        for kind, t in s["grounding"]["per_type"].items():
            acc = per_type.setdefault(kind, dict.fromkeys(TOTALS, 0))
            for k in TOTALS:
                acc[k] += t[k]
            examples.setdefault(kind, []).extend(t["examples"])
    overall = {k: sum(t[k] for t in per_type.values()) for k in TOTALS}
    first = stats[0]["grounding"]
    return {
        "stats_files": len(stats),
        "max_hallucination_rate": first["max_hallucination_rate"],
        "max_count_mismatches": first["max_count_mismatches"],
        "rejected": {r: sum(s["rejected"].get(r, 0) for s in stats) for r in FILTERS},
        "overall": chair_rates(overall),
        "per_type": {k: chair_rates(t) | {"examples": examples[k][:EXAMPLES]} for k, t in per_type.items()},
        "near_duplicates": stats[0].get("near_duplicates"),
    }
