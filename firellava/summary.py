"""`summary.json`: one object per stage that ran, each with its output `dir` and its key figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from firellava.core.io import read_json, write_json


def record_stage(summary_path: str | Path, stage: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Merge one stage's entry into the summary (other stages' entries are kept)."""
    path = Path(summary_path)
    summary = read_json(path) if path.exists() else {}
    summary[stage] = entry
    write_json(path, summary)
    return summary
