"""The `serve` stage at the end of `make demo`, and `python -m firellava.serve`'s refusal of a missing checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from firellava.core.io import read_json
from firellava.stages import resolve
from firellava.summary import record_stage
from firellava.toy.stage import write_demo_image

REPO = Path(__file__).resolve().parents[1]


def test_serve_stage_answers_one_chat_request(tiny_llava, tmp_path, capsys, monkeypatch):
    from tests.llava_helpers import save_llava

    monkeypatch.chdir(tmp_path)  # `make demo`'s output dir is relative; the summary's paths must not be

    model, processor = tiny_llava
    checkpoint = save_llava(model, processor, tmp_path / "out" / "finetune")
    image = tmp_path / "out" / "toy_world" / "data" / "serve_demo.png"  # where the demo config looks for it
    image.parent.mkdir(parents=True)
    write_demo_image(image, seed=3)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["experiment=demo", "paths.output_dir=out", "serve.demo.max_tokens=6"],
        )
    entry = resolve("serve")(cfg)
    assert entry["model"] == str(checkpoint) and entry["dir"] == str(tmp_path / "out" / "serve")
    assert entry["answer"] and entry["answer"] in capsys.readouterr().out
    assert entry["usage"]["prompt_tokens"] > model.config.image_seq_length
    assert 0 < entry["usage"]["completion_tokens"] <= 6 and entry["latency_s"] > 0
    assert read_json(tmp_path / "out" / "serve" / "demo_request.json") == entry
    summary = record_stage(cfg.paths.summary, "serve", entry)
    assert summary["serve"]["answer"] == entry["answer"]


def test_cli_refuses_a_missing_checkpoint(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "firellava.serve",
            f"paths.output_dir={tmp_path}",
            f"serve.model={tmp_path}/none",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "no such checkpoint directory" in proc.stderr + proc.stdout
