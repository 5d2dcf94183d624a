"""CHAIR rates from grounding totals: the datagen stage computes them per type, the mix again over shards."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOTALS = ("records", "mentions", "hallucinated", "records_hallucinating", "count_claims", "count_mismatches")


def chair_rates(t: Mapping[str, int]) -> dict[str, Any]:
    """The totals plus CHAIR_i (hallucinated / mentioned categories) and CHAIR_s (records with any)."""
    return {
        **t,
        "chair_i": round(t["hallucinated"] / t["mentions"], 4) if t["mentions"] else None,
        "chair_s": round(t["records_hallucinating"] / t["records"], 4) if t["records"] else None,
    }
