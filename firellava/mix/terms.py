"""The manifest's `training_terms`: the terms of every selected source on which models its data may train
(`core.terms`), which the finetune stage checks against the model it trains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def training_terms(sources: Mapping[str, Any], selected: Mapping[str, int]) -> list[dict[str, Any]]:
    """One entry per selected source that carries terms: the source, its record count, and the terms."""
    return [
        {"source": name, "records": n, **sources[name].terms.as_dict()}
        for name, n in selected.items()
        if n and getattr(sources[name], "terms", None) is not None
    ]


def render_section(terms: list[dict[str, Any]] | None) -> list[str]:
    """The data card's lines on the terms (markdown)."""
    lines = ["## Terms on what this data may train", ""]
    if not terms:
        return [*lines, "No selected source limits which models its data may train.", ""]
    for t in terms:
        lines += [
            f"- `{t['source']}` ({t['records']:,} records): **{t['name']}**: {t['statement']} "
            f"Models this data may train: {', '.join(f'`{f}`' for f in t['allowed_families'])}"
            + (f" ({t['url']})" if t.get("url") else "")
            + ".",
        ]
    lines += [
        "",
        "The finetune stage refuses a base LLM whose `model.family` is not allowed by every term above, unless "
        "`train.allow_terms_override=true`.",
        "",
    ]
    return lines
