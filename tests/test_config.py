"""The Hydra tree: every experiment composes, every group builds its spec, every target matches its constructor,
each consumer has its own engine, a spec survives a process boundary, the CLI behaves."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from firellava.config import build, to_node
from firellava.core.model_builder import ModelSpec
from firellava.datagen.stage import DatagenSpec, Teacher
from firellava.engines import EngineSpec, SamplingParams
from firellava.engines.vllm_engine import engine_args
from firellava.eval.stage import EvalSpec, JudgeSpec
from firellava.mix.sources import SourceSpec
from firellava.mix.stage import GeneratedSource, MixSpec
from firellava.paths import Paths
from firellava.serve.settings import FetchPolicy, Limits, ServerSettings
from firellava.serve.stage import DemoRequest
from firellava.stages import STAGES, resolve
from firellava.toy.stage import ToyWorldSpec
from firellava.train.spec import DeepSpeedSpec, StageSpec, TrainSpec

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUPS = ["model", "teacher", "data_gen", "mix", "train", "deepspeed", "eval", "serve", "paths", "toy_world"]
CONSUMERS = {"teacher": "vllm", "eval": "vllm", "judge": "vllm", "serve": "transformers"}  # engine/<consumer>
SPECS = {
    "paths": Paths,
    "model": ModelSpec,
    "teacher": Teacher,
    "data_gen": DatagenSpec,
    "mix": MixSpec,
    "train": TrainSpec,
    "deepspeed": DeepSpeedSpec,
    "eval": EvalSpec,
    "serve": ServerSettings,
    "toy_world": ToyWorldSpec,
    **{f"engine.{consumer}": EngineSpec for consumer in CONSUMERS},
}


def config(experiment: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])


def composed(experiment: str, *overrides: str) -> dict:
    return OmegaConf.to_container(config(experiment, *overrides), resolve=True)


def node(cfg, key: str):
    return OmegaConf.select(cfg, key)


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
    for group in GROUPS + ["experiment"] + [f"engine/{consumer}" for consumer in CONSUMERS]:
        assert list((CONF / group).glob("*.yaml")), group
    assert {"demo", "firellava_13b"} <= set(EXPERIMENTS)
    assert not list((CONF / "engine").glob("*.yaml")), (
        "engine options live per consumer, in engine/<consumer>/"
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_group_builds_its_spec(experiment):
    cfg = config(experiment)
    for key, cls in SPECS.items():
        spec = build(node(cfg, key))
        assert type(spec) is cls, key
        assert dataclasses.is_dataclass(spec) and type(spec).__dataclass_params__.frozen, key
    eval_spec, serve = build(cfg.eval), build(cfg.serve)
    assert isinstance(eval_spec.judge, JudgeSpec)
    assert (type(serve.fetch), type(serve.limits), type(serve.demo)) == (FetchPolicy, Limits, DemoRequest)
    assert serve.engine == build(cfg.engine.serve)
    mix = build(cfg.mix)
    assert isinstance(mix.generated, GeneratedSource)
    assert all(type(s) is SourceSpec and s.name == name for name, s in mix.sources.items())
    train = build(cfg.train)
    assert type(train.pretrain) is type(train.finetune) is StageSpec
    for consumer in CONSUMERS:
        sampling = build(cfg.engine[consumer]).sampling
        assert type(sampling) is SamplingParams and hash(sampling) is not None, consumer


def test_defaults_by_interpolation():
    cfg = config("firellava_13b", "paths.output_dir=/runs/x")
    spec = build(cfg.eval)
    assert (spec.checkpoint, spec.model_name) == ("/runs/x/finetune", "finetune")
    assert spec.data_root == "playground/data/eval"
    assert (
        build(config("firellava_13b", "eval.checkpoint=/ckpt/firellava-13b/").eval).model_name
        == "firellava-13b"
    )
    serve = build(config("firellava_13b", "serve.model=/ckpt/firellava-13b").serve)
    assert serve.model_name == "firellava-13b"
    assert build(config("demo", "eval.judge.model=/m/judge").eval).judge == JudgeSpec("/m/judge", "/m/judge")
    assert build(config("demo").eval).data_root == "outputs/demo/toy_world/data/eval"  # the toy world wrote it


def test_each_consumer_has_its_own_engine():
    cfg = config("firellava_13b")
    teacher, evaluated = build(cfg.engine.teacher), build(cfg.engine.eval)
    assert teacher.backend == evaluated.backend == "vllm"
    assert teacher.options["tensor_parallel_size"] == 2 and evaluated.options["tensor_parallel_size"] == 1
    assert teacher.options["max_model_len"] == build(node(cfg, "teacher")).max_model_len == 4096
    assert teacher.sampling.temperature == 0.7 and evaluated.sampling.temperature == 0.0
    assert build(cfg.serve).engine.backend == "vllm"
    # pointing the teacher at an endpoint leaves eval, the judge and the server where they were
    moved = config("firellava_13b", "engine/teacher=openai", "engine.teacher.options.base_url=http://h:9000")
    assert build(moved.engine.teacher).options["base_url"] == "http://h:9000"
    for consumer in ("eval", "judge", "serve"):
        assert OmegaConf.to_container(moved.engine[consumer], resolve=True) == OmegaConf.to_container(
            cfg.engine[consumer], resolve=True
        ), consumer
    # the demo runs every engine on CPU; its judge writes short reviews and its teacher samples
    demo = config("demo", "engine/eval=transformers", "engine.eval.options.batch_size=16")
    assert {build(demo.engine[c]).backend for c in CONSUMERS} == {"transformers"}
    assert (
        build(demo.engine.eval).options["batch_size"] == 16
        and build(demo.engine.teacher).options["batch_size"] == 8
    )
    assert build(demo.engine.judge).sampling.max_tokens == 16
    assert build(demo.engine.teacher).sampling.temperature == 0.5


def test_vllm_options_are_translated_once():
    assert engine_args({"batch_size": 16, "device": "cuda", "dtype": "bfloat16"}) == {
        "max_num_seqs": 16,
        "dtype": "bfloat16",
    }
    assert engine_args({"tensor_parallel_size": 2}) == {"tensor_parallel_size": 2}
    with pytest.raises(
        InstantiationException, match="unknown engine backend 'vlm'(.|\n)*full_key: engine.eval"
    ):
        build(config("demo", "engine.eval.backend=vlm").engine.eval)


def test_a_spec_crosses_a_process_boundary_as_a_node():
    settings = build(config("firellava_13b").serve)
    settings = dataclasses.replace(settings, api_key="k${x}")  # text that looks like a reference stays text
    written = json.loads(json.dumps(to_node(settings)))
    assert written["engine"]["_target_"] == "firellava.engines.base.EngineSpec"
    again = build(written)
    assert type(again) is ServerSettings and to_node(again) == written  # tuples come back as lists
    assert (again.api_key, again.engine, again.limits, again.demo) == (
        "k${x}",
        dataclasses.replace(settings.engine, sampling=dataclasses.replace(settings.engine.sampling, stop=[])),
        settings.limits,
        settings.demo,
    )


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
    assert cfg["engine"]["teacher"]["options"]["enable_prefix_caching"] is True
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
