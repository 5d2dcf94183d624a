"""Notebooks are executed on toy outputs, so they cannot rot.

The data notebook reads real datagen-shaped records and the real mix stage's output on the session toy world. The
results notebook reads what the training and eval stages write, made with their own writers (HF's TrainerState,
eval's write_report) rather than by training a model here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from firellava.core.io import read_json, write_json, write_jsonl
from tests.conftest import REPO, compose_config

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TYPES = ("conversation", "detail", "complex_reasoning")


def write_datagen(out: Path, world: dict) -> None:
    """Records and rejects in the datagen stage's formats, on the toy world's COCO images."""
    images = [im["file_name"] for im in read_json(world["coco_instances"])["images"]][:3]
    prefix = Path(world["coco_image_dir"]).relative_to(world["image_folder"]).as_posix()
    for kind in TYPES:
        rows = [
            {
                "id": f"{kind}-{i}",
                "image": f"{prefix}/{name}",
                "conversations": [
                    {"from": "human", "value": f"<image>\nWhat is in the picture? ({kind})"},
                    {"from": "gpt", "value": "Shapes of several colours. " * (i + 1)},
                ],
                "source": "firellava_generated",
                "license": "apache-2.0",
                "model": "toy-teacher",
                "type": kind,
            }
            for i, name in enumerate(images)
        ]
        write_jsonl(out / f"{kind}.jsonl", rows)
    write_jsonl(
        out / "rejected.jsonl",
        [
            {
                "id": "detail-9",
                "type": "detail",
                "reason": "truncated",
                "detail": "max_tokens",
                "text": "A red",
            },
            {
                "id": "conversation-9",
                "type": "conversation",
                "reason": "malformed",
                "detail": "x",
                "text": "Q",
            },
        ],
    )


def write_training(stage_dir: Path, steps: int, first_loss: float) -> dict:
    from transformers import TrainerState

    history = [
        {"step": s, "epoch": s / steps, "loss": first_loss / s, "learning_rate": 1e-3 * (1 - s / steps)}
        for s in range(1, steps + 1)
    ]
    stage_dir.mkdir(parents=True)
    TrainerState(global_step=steps, max_steps=steps, log_history=history).save_to_json(
        str(stage_dir / "trainer_state.json")
    )
    return {"dir": str(stage_dir), "steps": steps, "first_loss": first_loss, "final_loss": first_loss / steps}


def write_eval(eval_dir: Path) -> dict:
    from firellava.eval.report import write_report

    results = {
        "vqav2": {"split": "val", "metric": "accuracy", "questions": 8, "offline": True, "score": 62.5},
        "pope": {"split": "test", "metric": "f1", "questions": 8, "offline": True, "score": 75.0},
    }
    eval_dir.mkdir(parents=True)
    write_report(eval_dir, results, {"model": "finetune"})
    return {"dir": str(eval_dir), "model": "finetune", "vqav2": 62.5, "pope": 75.0}


@pytest.fixture(scope="module")
def pipeline_summary(toy_world, tmp_path_factory) -> Path:
    from firellava.mix.stage import run as run_mix

    out = tmp_path_factory.mktemp("pipeline")
    write_datagen(out / "datagen", toy_world)
    cfg = compose_config(
        "experiment=demo",
        f"paths.output_dir={out}",
        f"paths.data_root={Path(toy_world['image_folder'])}",
        f"paths.mix665k_json={toy_world['mix665k_json']}",
        "mix.image_workers=1",
    )
    summary = {
        "toy_world": toy_world,
        "datagen": {"dir": str(out / "datagen"), "parsed": 9},
        "mix": run_mix(cfg),
        "pretrain": write_training(out / "pretrain", 6, 4.0),
        "finetune": write_training(out / "finetune", 10, 3.0),
        "eval": write_eval(out / "eval"),
    }
    for i, entry in enumerate(summary.values()):
        entry["wall_s"] = float(i)
    write_json(out / "summary.json", summary)
    return out / "summary.json"


def execute(name: str, summary: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("FIRELLAVA_SUMMARY", str(summary))
    # The kernel imports this checkout's package, not whichever one the environment installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0]["evalue"]
    return nb


def outputs_of(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells for o in c.get("outputs", []) if kind in o.get("data", {})]


def test_toy_world_notebook_runs(toy_world, tmp_path, monkeypatch):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"toy_world": toy_world}))
    execute("toy_world.ipynb", summary, monkeypatch)


def test_data_notebook_shows_samples_counts_lengths_and_rejects(pipeline_summary, monkeypatch):
    nb = execute("data.ipynb", pipeline_summary, monkeypatch)
    assert len(outputs_of(nb, "image/png")) >= 3  # generated samples, mix samples, histograms
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "--- truncated (detail detail-9)" in text and "--- malformed" in text
    counts = "".join(o["data"]["text/plain"] for o in outputs_of(nb, "text/plain"))
    mix = json.loads(pipeline_summary.read_text())["mix"]
    # 9 generated records; the mix may leave out those on benchmark images or near-duplicating another source
    kept = mix["by_source"]["firellava_generated"]
    assert "'conversation': 3" in counts and f"'firellava_generated': {kept}" in counts
    for table in ("grounding", "near_duplicates", "decontamination"):  # the checks' tables, printed by name
        assert f"{table}\n" in text


def test_results_notebook_shows_curves_and_the_eval_table(pipeline_summary, monkeypatch):
    nb = execute("results.ipynb", pipeline_summary, monkeypatch)
    assert len(outputs_of(nb, "image/png")) >= 2  # the curves and the eval chart
    html = "".join(o["data"]["text/html"] for o in outputs_of(nb, "text/html"))
    assert "vqav2" in html and "62.5" in html


@pytest.mark.parametrize("name", ["toy_world.ipynb", "data.ipynb", "results.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"
    )


def test_make_notebooks_writes_executed_copies_beside_the_summary(pipeline_summary, tmp_path, monkeypatch):
    from firellava.report.__main__ import run_notebooks

    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # run_notebooks sets it for the kernel
    monkeypatch.setenv("FIRELLAVA_SUMMARY", "")
    written = run_notebooks(pipeline_summary, tmp_path / "notebooks", ["results", "toy_world"])
    assert [p.name for p in written] == ["results.ipynb", "toy_world.ipynb"]
    assert outputs_of(nbformat.read(written[0], as_version=4), "image/png")
