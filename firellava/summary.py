"""`summary.json` and `summary.md`: one entry per stage that ran, each with its output `dir`, its key figures and
its wall time (`wall_s`).

The entries are whatever the stages return; the markdown is rendered from them generically (nested keys dotted,
short lists inline), so a figure a stage adds appears without this module knowing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firellava.core.io import atomic_path, read_json, write_json

WALL_S = "wall_s"
MD_NAME = "summary.md"
# Bookkeeping of the pipeline itself, shown in a stage's heading line rather than among its figures.
META_KEYS = (WALL_S, "finished_at", "config_digest", "dir")
MAX_INLINE = 8  # longer lists are shown by their length


def record_stage(summary_path: str | Path, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Merge one stage's entry into the summary (other stages' entries are kept) and rewrite summary.md."""
    path = Path(summary_path)
    summary = read_json(path) if path.exists() else {}
    summary[stage] = entry
    write_json(path, summary)
    with atomic_path(path.with_name(MD_NAME)) as tmp:
        tmp.write_text(render_markdown(summary), encoding="utf-8")
    return summary


def flatten(entry: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def format_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    elif isinstance(value, bool) or value is None:
        text = str(value).lower() if value is not None else "-"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, list | tuple):
        if len(value) > MAX_INLINE or any(isinstance(v, Mapping | list) for v in value):
            text = f"[{len(value)} items]"
        else:
            text = ", ".join(format_value(v) for v in value) or "[]"
    elif isinstance(value, Mapping):
        text = "{}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(float(seconds), 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def render_markdown(summary: Mapping[str, Any]) -> str:
    lines = ["# Pipeline summary", "", "| stage | wall time | finished | output |", "|---|---:|---|---|"]
    total = 0.0
    for stage, entry in summary.items():
        if not isinstance(entry, Mapping):
            continue
        wall = entry.get(WALL_S)
        total += wall or 0.0
        wall_text = format_duration(wall) if wall is not None else "-"
        lines.append(f"| {stage} | {wall_text} | {entry.get('finished_at', '-')} | {entry.get('dir', '-')} |")
    lines += ["", f"Wall time of the stages listed: {format_duration(total)}.", ""]
    for stage, entry in summary.items():
        if not isinstance(entry, Mapping):
            continue
        lines += [f"## {stage}", "", "| figure | value |", "|---|---|"]
        rows = [(k, v) for k, v in flatten(entry) if k.split(".")[0] not in META_KEYS]
        lines += [f"| {key} | {format_value(value)} |" for key, value in rows]
        lines.append("")
    return "\n".join(lines)
