"""The report: results.json, a markdown table beside LLaVA-1.5-13B's published numbers, a bar chart, wandb."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from firellava.core.io import atomic_path, write_json
from firellava.eval.benchmarks import BENCHMARKS


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _cell(r: Mapping[str, Any]) -> str:
    if r["score"] is not None:
        return _fmt(r["score"])
    if not r["offline"]:
        return f"server: {Path(r['submission']).name if r.get('submission') else 'no file'}"
    return "no score (judge)"  # a judged benchmark whose reviews could not be parsed


def markdown_table(results: Mapping[str, Mapping[str, Any]], model: str) -> str:
    """One row per benchmark; a blind column (the same model without the images) when eval.blind ran."""
    blind = any("blind" in r for r in results.values())
    blind_head, blind_rule = (" blind (no image) |", "---:|") if blind else ("", "")
    lines = [
        f"| Benchmark | split | metric | {model} |{blind_head} LLaVA-1.5-13B |",
        f"|---|---|---|---:|{blind_rule}---:|",
    ]
    for name, r in results.items():
        cls = BENCHMARKS[name]
        row = f"| {cls.title} | {r['split']} | {cls.metric} | {_cell(r)} |"
        if blind:
            row += f" {_fmt(r.get('blind', {}).get('score'))} |"  # a server split is not submitted blind
        lines.append(f"{row} {_fmt(cls.published)} |")
    return "\n".join(lines) + "\n"


def bar_chart(results: Mapping[str, Mapping[str, Any]], path: Path, model: str) -> Path:
    """Scores as a percentage of each benchmark's maximum (MME-P is out of 2000), ours beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    ours = [100 * (results[n]["score"] or 0.0) / BENCHMARKS[n].scale for n in names]
    paper = [100 * (BENCHMARKS[n].published or 0.0) / BENCHMARKS[n].scale for n in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4))
    ax.bar([i - 0.2 for i in x], ours, width=0.4, label=model)
    ax.bar([i + 0.2 for i in x], paper, width=0.4, label="LLaVA-1.5-13B (paper)", alpha=0.6)
    ax.set_xticks(list(x), [BENCHMARKS[n].title for n in names], rotation=30, ha="right")
    ax.set_ylabel("% of maximum")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: Path, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    files = {
        "results_json": write_json(out_dir / "results.json", {**meta, "benchmarks": results}),
        "results_md": out_dir / "results.md",
        "results_png": bar_chart(results, out_dir / "results.png", meta["model"]),
    }
    with atomic_path(files["results_md"]) as tmp:
        tmp.write_text(markdown_table(results, meta["model"]), encoding="utf-8")
    return files


def log_wandb(run: Any, results: Mapping[str, Mapping[str, Any]], chart: Path) -> None:
    """The scores, the table beside LLaVA-1.5-13B's published numbers and the chart, into the stage's run."""
    import wandb

    run.log({f"eval/{n}": r["score"] for n, r in results.items() if r["score"] is not None})
    table = wandb.Table(columns=["benchmark", "split", "score", "llava_1_5_13b"])
    for n, r in results.items():
        table.add_data(n, r["split"], r["score"], BENCHMARKS[n].published)
    run.log({"eval/results": table, "eval/chart": wandb.Image(str(chart))})
