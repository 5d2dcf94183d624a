"""A pipeline run's summary.json: which stage wrote what where."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from firellava.core.io import read_json

REPO = Path(__file__).resolve().parents[2]
SUMMARY_ENV = "FIRELLAVA_SUMMARY"  # a notebook run on other outputs (the tests) names their summary.json here


def summary_path(default: str | Path = "outputs/demo/summary.json") -> Path:
    path = Path(os.environ.get(SUMMARY_ENV) or default)
    return path if path.is_absolute() else REPO / path


def load_summary(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path else summary_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no summary.json; run `make demo` first (or set ${SUMMARY_ENV})")
    return read_json(path)


def stage_dir(summary: dict[str, Any], stage: str) -> Path:
    if stage not in summary:
        raise KeyError(f"summary.json has no {stage!r} entry (stages run: {', '.join(summary)})")
    return Path(summary[stage]["dir"])
