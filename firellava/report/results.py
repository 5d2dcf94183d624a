"""Training curves from the trainer state the training stages write, and the eval results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from firellava.core.io import read_json
from firellava.train.export import TRAINER_STATE


def trainer_state_file(stage_dir: str | Path) -> Path:
    """The finished run's state, else the newest checkpoint's (a run still going, or killed)."""
    stage_dir = Path(stage_dir)
    if (stage_dir / TRAINER_STATE).exists():
        return stage_dir / TRAINER_STATE
    found = sorted(
        stage_dir.glob(f"checkpoints/checkpoint-*/{TRAINER_STATE}"),
        key=lambda p: int(p.parent.name.split("-")[1]),
    )
    if not found:
        raise FileNotFoundError(
            f"{stage_dir}: no {TRAINER_STATE} (neither the finished run's nor a checkpoint's)"
        )
    return found[-1]


def curves(stage_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Per logged quantity (loss, learning_rate, grad_norm, ...), its (step, value) points."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in read_json(trainer_state_file(stage_dir))["log_history"]:
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, int | float) and "step" in entry:
                out.setdefault(key, []).append((entry["step"], float(value)))
    return out


def plot_curves(axes: Sequence[Any], stages: Mapping[str, str | Path], keys: Sequence[str]) -> None:
    """One axis per key (e.g. loss, learning_rate), one line per training stage."""
    for ax, key in zip(axes, keys):
        for stage, stage_dir in stages.items():
            points = curves(stage_dir).get(key, [])
            if points:
                ax.plot(*zip(*points), label=stage)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.legend(fontsize=8)


def eval_results(eval_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(eval_dir) / "results.json")


def eval_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark: split, metric, score (None: scored by a server or unparsable reviews)."""
    return [
        {
            "benchmark": name,
            "split": r["split"],
            "metric": r["metric"],
            "score": r["score"],
            "questions": r.get("questions"),
        }
        for name, r in results["benchmarks"].items()
    ]
