"""Datagen and eval through the `openai` engine against the built-in server (a real subprocess on loopback):
the server serving the toy teacher writes the same dataset, and serving the tiny LLaVA gives the same answers,
as the in-process transformers engine decoding greedily.

Both sides decode one unpadded sequence at a time (batch size 1 in the server's engine.serve and in process), so
equal outputs are exact, not subject to padding's float noise; the client still sends requests concurrently.
The `openai` engines are configured as `engine/teacher=openai engine.teacher.options.base_url=...` would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from firellava.config import CONF_DIR, build
from firellava.datagen.stage import DatagenSpec, Teacher, generate_dataset
from firellava.engines import EngineSpec, SamplingParams, build_engine
from firellava.eval.stage import EvalSpec, evaluate
from firellava.serve.process import ServerProcess
from firellava.serve.settings import ServerSettings
from firellava.toy.teacher import train_toy_teacher
from tests.conftest import toy_world_spec
from tests.test_datagen_stage import TYPES, outputs, sources

SERIAL_CPU = EngineSpec("transformers", {"device": "cpu", "dtype": "float32", "batch_size": 1})


def served(model: Path, name: str, log_path: Path) -> ServerProcess:
    settings = ServerSettings(model=str(model), model_name=name, port=0, engine=SERIAL_CPU)
    return ServerProcess(settings, log_path=log_path, start_timeout_s=90)


def openai_engine(consumer: str, *overrides: str) -> EngineSpec:
    """`engine/<consumer>=openai` and the overrides, as the command line gives them."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"engine/{consumer}=openai", *overrides])
    return build(cfg.engine[consumer])


def requests_logged(log_path: Path, route: str) -> int:
    """uvicorn's access log lines for successful POSTs to `route`."""
    pattern = re.compile(rf'"POST {re.escape(route)} HTTP/1\.1" 200')
    return len(pattern.findall(log_path.read_text(errors="replace")))


@pytest.fixture(scope="module")
def toy_teacher(toy_world, tmp_path_factory) -> Path:
    """The toy teacher, trained for a handful of steps: the real artefact and template, not a good teacher."""
    out = tmp_path_factory.mktemp("serve-teacher") / "teacher"
    spec = toy_world_spec(teacher={"scenes": 6, "steps": 6, "batch_size": 4}).teacher
    train_toy_teacher(spec, Path(toy_world["models"]["tokenizer"]), out, seed=42)
    return out


def test_datagen_through_the_server_matches_in_process(toy_world, toy_teacher, tmp_path):
    spec = DatagenSpec(
        counts={"conversation": 2, "detail": 2, "complex_reasoning": 2}, prompt_set="toy", seed=3
    )
    teacher = Teacher(model=str(toy_teacher), license="apache-2.0", commercial_use=True, name="toy-teacher")
    params = SamplingParams(max_tokens=12, temperature=0.0, top_p=1.0, stop=(), seed=3)
    log_path = tmp_path / "server.log"
    with served(toy_teacher, "teacher", log_path) as server:
        remote = generate_dataset(
            spec,
            teacher,
            sources(toy_world),
            lambda: build_engine(
                openai_engine(
                    "teacher",
                    f"engine.teacher.options.base_url={server.base_url}",
                    "engine.teacher.options.served_model=teacher",
                    "engine.teacher.options.concurrency=4",
                ),
                str(toy_teacher),
            ),
            params,
            tmp_path / "remote",
        )
        assert requests_logged(log_path, "/v1/chat/completions") == remote["requested"] == 6
    local = generate_dataset(
        spec,
        teacher,
        sources(toy_world),
        lambda: build_engine(SERIAL_CPU, str(toy_teacher), "toy-teacher"),
        params,
        tmp_path / "local",
    )

    assert remote["requested"] == remote["generated"] == 6
    assert remote["parsed"] + sum(remote["rejected"].values()) == remote["generated"]
    got = outputs(tmp_path / "remote")
    assert sum(len(got[t]) for t in TYPES) == remote["parsed"]
    assert len(got["rejected"]) == sum(remote["rejected"].values())
    assert all(r["reason"] in remote["rejected"] for r in got["rejected"])
    stats = json.loads((tmp_path / "remote" / "stats.json").read_text())
    assert stats["prompt_tokens"] > 0 and 0 < stats["output_tokens"] <= 12 * stats["generated"]
    # the server's usage counts and greedy texts are the in-process engine's, record for record
    assert got == outputs(tmp_path / "local")
    local_stats = json.loads((tmp_path / "local" / "stats.json").read_text())
    assert (stats["prompt_tokens"], stats["output_tokens"]) == (
        local_stats["prompt_tokens"],
        local_stats["output_tokens"],
    )
    assert {k: v for k, v in remote.items() if k not in ("dir", "seconds", "output_tokens_per_s")} == {
        k: v for k, v in local.items() if k not in ("dir", "seconds", "output_tokens_per_s")
    }


BENCHES = ["vqav2", "pope", "scienceqa_img"]


def eval_spec(checkpoint: Path, data_root: Path, batch_size: int) -> EvalSpec:
    return EvalSpec(
        benchmarks=BENCHES,
        checkpoint=str(checkpoint),
        model_name="finetune",
        data_root=str(data_root),
        splits={"vqav2": "val"},
        limit=3,
        batch_size=batch_size,
        max_new_tokens=4,
    )


def answers(out: Path, model_name: str) -> dict[str, dict[str, str]]:
    got = {}
    for name in BENCHES:
        lines = (out / "answers" / model_name / f"{name}.jsonl").read_text().splitlines()
        got[name] = {str(r["question_id"]): r["text"] for r in map(json.loads, lines)}
    return got


def test_eval_through_the_server_matches_in_process(tiny_llava, toy_world, tmp_path):
    from tests.llava_helpers import save_llava

    model, processor = tiny_llava
    checkpoint = save_llava(model, processor, tmp_path / "finetune")
    data_root = Path(toy_world["dir"]) / "data" / "eval"
    log_path = tmp_path / "server.log"
    with served(checkpoint, "toy-llava", log_path) as server:
        # 3 answers per call and 3 requests in flight; the server still decodes them one by one
        remote_engine = openai_engine(
            "eval",
            f"engine.eval.options.base_url={server.base_url}",
            "engine.eval.options.served_model=toy-llava",
            "engine.eval.options.concurrency=3",
        )
        remote = evaluate(
            eval_spec(checkpoint, data_root, batch_size=3), remote_engine, SERIAL_CPU, tmp_path / "remote"
        )
        assert requests_logged(log_path, "/v1/chat/completions") == remote["generated"] == 9
    local = evaluate(
        eval_spec(checkpoint, data_root, batch_size=1), SERIAL_CPU, SERIAL_CPU, tmp_path / "local"
    )

    assert remote["questions"] == local["questions"] == 9
    assert remote["model"] == local["model"]  # the answers are keyed to the checkpoint, not the backend
    assert answers(tmp_path / "remote", "finetune") == answers(tmp_path / "local", "finetune")
    results = json.loads((tmp_path / "remote" / "results.json").read_text())["benchmarks"]
    for name in BENCHES:
        assert results[name]["questions"] == 3 and results[name]["score"] is not None, name
        assert remote[name] == local[name], name
