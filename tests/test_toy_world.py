"""The toy world stage through the real CLI: deterministic, refuses to overwrite, summary.json entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pycocotools.coco import COCO

from firellava.core.io import sha256_file

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "toy_world.coco_images=8",
    "toy_world.pretrain_images=8",
    "toy_world.vocab_size=512",  # enough merges for every colour and kind to be one token
    "toy_world.vision_pretrain.steps=10",
    "toy_world.vision_pretrain.scenes=64",  # drawing the default thousands would cost more than the steps
    "toy_world.llm_pretrain.steps=5",
    "toy_world.teacher.steps=2",
    "toy_world.teacher.scenes=2",
    "toy_world.teacher.batch_size=2",
    "toy_world.benchmark_questions=4",
    "toy_world.cache_dir=null",  # two builds must each train: the determinism check
    *(
        f"toy_world.per_source.{s}=3"
        for s in ("llava_instruct", "vqav2", "gqa", "okvqa", "refcoco", "a_okvqa")
    ),
]


def run_stage(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "firellava",
        "stages=[toy_world]",
        f"paths.output_dir={output_dir}",
        *SMALL,
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_toy_world_stage(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = run_stage(a)
    assert first.returncode == 0, first.stderr
    assert run_stage(b).returncode == 0

    # Same seed: byte-identical data and models.
    ha, hb = hashes(a / "toy_world"), hashes(b / "toy_world")
    assert ha == hb
    assert any(k.endswith("model.safetensors") for k in ha) and any(k.endswith(".jpg") for k in ha)
    assert run_stage(tmp_path / "c", "seed=1").returncode == 0
    assert hashes(tmp_path / "c" / "toy_world") != ha

    entry = json.loads((a / "summary.json").read_text())["toy_world"]
    assert Path(entry["dir"]) == (a / "toy_world").resolve()
    for key in ("coco_instances", "coco_captions", "pretrain_json", "mix665k_json", "demo_image"):
        assert Path(entry[key]).is_file(), key
    # What the production stages read by path: the trained teacher (datagen) and the benchmark files (eval).
    assert set(entry["models"]) == {"tokenizer", "vision_tower", "llm", "teacher"}
    assert (Path(entry["models"]["teacher"]) / "config.json").is_file()
    assert entry["teacher_training"]["steps"] == 2
    benchmarks = (a / "toy_world" / "data" / "eval").resolve()
    assert all(Path(d).is_dir() and Path(d).is_relative_to(benchmarks) for d in entry["benchmarks"].values())
    coco = COCO(entry["coco_instances"])
    assert len(coco.getImgIds()) == entry["counts"]["coco_images"] == 8
    assert sum(entry["counts"]["mix_per_source"].values()) == entry["counts"]["mix_records"]
    assert not list(a.glob(".toy_world.*"))  # no staging directory left behind

    # A non-empty toy world is not overwritten unless asked; the old one is untouched.
    again = run_stage(a, "seed=3")
    assert again.returncode != 0
    assert "not empty" in again.stderr and "toy_world.overwrite=true" in again.stderr
    assert hashes(a / "toy_world") == ha
    assert run_stage(a, "seed=1", "toy_world.overwrite=true").returncode == 0
    assert hashes(a / "toy_world") == hashes(tmp_path / "c" / "toy_world")
