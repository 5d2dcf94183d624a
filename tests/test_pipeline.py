"""`python -m firellava`'s run of the stage list: summary.json/.md with wall times, a failing stage stops the run
and keeps what came before, a rerun continues from the failed stage, wandb gets one run per stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from firellava import stages as pipeline
from firellava.summary import render_markdown
from tests.conftest import REPO, compose_config
from tests.wandb_helpers import offline_runs


class FakeStages:
    """Stand-ins for toy_world, datagen and mix: each writes its dir and returns figures; mix fails while
    `mix.image_check` is not one the real stage knows."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def resolve(self, name: str):
        def run(cfg):
            self.calls.append(name)
            if name == "mix" and cfg.mix.image_check == "bogus":
                raise ValueError("mix.image_check must be one of ..., got 'bogus'")
            out = Path(cfg.paths.output_dir) / name
            out.mkdir(parents=True, exist_ok=True)
            return {"dir": str(out), "records": 3, "nested": {"ok": 2, "rate": 0.5}, "sources": ["a", "b"]}

        return run


@pytest.fixture
def fake(monkeypatch):
    stages = FakeStages()
    monkeypatch.setattr(pipeline, "resolve", stages.resolve)
    return stages


def cfg(out: Path, *extra: str):
    return compose_config("stages=[toy_world,datagen,mix]", f"paths.output_dir={out}", *extra)


def test_failed_stage_stops_the_run_and_a_rerun_continues_from_it(fake, tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        pipeline.run_stages(cfg(tmp_path, "mix.image_check=bogus"))
    assert fake.calls == ["toy_world", "datagen", "mix"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {
        "toy_world",
        "datagen",
    }  # the failed stage has no entry; the earlier ones are kept
    assert all(e["wall_s"] >= 0 and e["records"] == 3 for e in summary.values())

    fake.calls.clear()
    pipeline.run_stages(cfg(tmp_path))
    assert fake.calls == ["mix"]  # toy_world and datagen are done with this config
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["toy_world", "datagen", "mix"]

    # A changed config of a done stage reruns it and everything after it; resume=false reruns all.
    fake.calls.clear()
    pipeline.run_stages(cfg(tmp_path, "data_gen.seed=5"))
    assert fake.calls == ["datagen", "mix"]
    fake.calls.clear()
    pipeline.run_stages(cfg(tmp_path, "data_gen.seed=5", "resume=false"))
    assert fake.calls == ["toy_world", "datagen", "mix"]
    # Outputs gone: the stage is not done whatever summary.json says.
    fake.calls.clear()
    (tmp_path / "mix").rmdir()
    pipeline.run_stages(cfg(tmp_path, "data_gen.seed=5"))
    assert fake.calls == ["mix"]


def test_summary_md_lists_every_stage_with_its_wall_time_and_figures(fake, tmp_path):
    pipeline.run_stages(cfg(tmp_path))
    md = (tmp_path / "summary.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for stage, entry in summary.items():
        assert f"## {stage}" in md
        assert f"| {stage} | {entry['wall_s']:.1f}s |" in md
    assert "| nested.ok | 2 |" in md and "| nested.rate | 0.5 |" in md and "| sources | a, b |" in md
    # A figure another stage adds appears without the renderer knowing it.
    summary["finetune"] = {"packing": {"real_token_fraction": 0.957}, "wall_s": 61.0}
    assert "| packing.real_token_fraction | 0.957 |" in render_markdown(summary)
    assert "| finetune | 1m01.0s |" in render_markdown(summary)


def test_each_stage_logs_to_one_wandb_group_offline(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    pipeline.run_stages(cfg(tmp_path, "wandb.mode=offline", "wandb.project=firellava-test"))
    runs = offline_runs(tmp_path)
    assert set(runs) == {"toy_world", "datagen", "mix"}
    groups = {r["group"] for r in runs.values()}
    assert len(groups) == 1 and groups.pop().startswith("demo-")
    assert {r["project"] for r in runs.values()} == {"firellava-test"}
    assert runs["mix"]["job_type"] == "mix"
    # The stage's summary entry: its numbers, nested keys joined with "/", and the wall time.
    assert runs["datagen"]["summary"]["records"] == 3 and runs["datagen"]["summary"]["nested/rate"] == 0.5
    assert "wall_s" in runs["mix"]["summary"]


def test_wandb_disabled_by_default_writes_nothing(fake, tmp_path):
    pipeline.run_stages(cfg(tmp_path))
    assert not (tmp_path / "wandb").exists()


def test_cli_failing_stage_exits_non_zero_with_its_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "firellava", "stages=[mix]", f"paths.output_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "file not found" in out and "stage mix failed" in out
    assert not (tmp_path / "summary.json").exists()


def test_every_stage_declares_the_config_it_reads():
    cfg = compose_config("experiment=firellava_13b")
    assert set(pipeline.READS) == set(pipeline.STAGES)
    for stage, keys in pipeline.READS.items():
        assert all(OmegaConf.select(cfg, key) is not None for key in keys), stage
