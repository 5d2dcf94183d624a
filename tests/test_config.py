"""The Hydra tree: every experiment composes, every target matches its constructor, the CLI behaves."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from firellava.stages import STAGES, resolve

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUPS = ["model", "teacher", "engine", "data_gen", "mix", "train", "deepspeed", "eval", "serve", "paths"]


def composed(experiment: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
    return OmegaConf.to_container(cfg, resolve=True)


def targets(node, where="cfg"):
    if isinstance(node, dict):
        if "_target_" in node:
            yield where, node
        for key, value in node.items():
            yield from targets(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from targets(value, f"{where}[{i}]")


def test_layout_has_every_group():
    for group in GROUPS + ["experiment"]:
        assert list((CONF / group).glob("*.yaml")), group
    assert {"demo", "firellava_13b"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_targets_match_signatures(experiment):
    cfg = composed(experiment)
    for stage in cfg["stages"]:
        assert callable(resolve(stage)), stage
    found = list(targets(cfg))
    assert found, "no _target_ in the composed config"
    for where, node in found:
        module, _, attr = node["_target_"].rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        params = inspect.signature(obj).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        given = {k for k in node if not k.startswith("_")}
        assert given <= set(params), f"{where}: {node['_target_']} has no parameter(s) {given - set(params)}"
        missing = {n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in given}
        missing -= {n for n, p in params.items() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        assert not missing, f"{where}: {node['_target_']} needs {missing}"


def test_production_values():
    cfg = composed("firellava_13b")
    assert cfg["model"]["vision_tower"] == "openai/clip-vit-large-patch14-336"
    assert cfg["model"]["vision_feature_layer"] == -2
    assert cfg["model"]["llm"] == "lmsys/vicuna-13b-v1.5"
    assert cfg["teacher"]["model"] == "codellama/CodeLlama-34b-Instruct-hf"
    train = cfg["train"]
    assert train["num_gpus"] == 8
    assert (train["pretrain"]["global_batch_size"], train["finetune"]["global_batch_size"]) == (256, 128)
    assert (train["pretrain"]["learning_rate"], train["finetune"]["learning_rate"]) == (1e-3, 2e-5)
    assert (train["pretrain"]["zero_stage"], train["finetune"]["zero_stage"]) == (2, 3)
    for stage in ("pretrain", "finetune"):
        t = train[stage]
        assert (
            t["global_batch_size"] % (t["per_device_batch_size"] * train["num_gpus"] * train["num_nodes"])
            == 0
        )
    assert cfg["deepspeed"]["zero3"]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "gradient_clipping" not in cfg["deepspeed"]["zero2"]


def test_demo_points_at_the_toy_world():
    cfg = composed("demo")
    assert cfg["paths"]["output_dir"] == "outputs/demo"
    assert cfg["model"]["llm"] == "outputs/demo/toy_world/models/llm"
    assert cfg["stages"] == list(STAGES)  # the demo runs every stage, in pipeline order
    assert composed("firellava_13b")["stages"] == ["datagen", "mix", "pretrain", "finetune", "eval"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "firellava", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_composed_production_config():
    proc = run_cli("--cfg", "job", "experiment=firellava_13b")
    assert proc.returncode == 0, proc.stderr
    assert "vicuna-13b-v1.5" in proc.stdout and "CodeLlama-34b-Instruct-hf" in proc.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("experiment=nope", "Could not find 'experiment/nope'"),
        ("trian.num_gpus=2", "Could not override 'trian.num_gpus'"),
        ("stages=[toy_world,bogus]", "unknown stage"),
    ],
)
def test_bad_overrides_fail_with_a_clear_message(override, message, tmp_path):
    proc = run_cli(override, f"paths.output_dir={tmp_path}")
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
