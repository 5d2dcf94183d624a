"""The datagen stage end to end with the real transformers engine on a tiny text-only Llama: output contract,
resume after SIGKILL (same set of records as an uninterrupted run, no duplicates), an engine failing mid-run,
reruns that skip finished work, and refusal to mix runs made with other settings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firellava.core.records import check_record
from firellava.core.tracking import WandbSpec, stage_run
from firellava.datagen.stage import DatagenSpec, Sources, Teacher, generate_dataset
from firellava.engines import EngineSpec, SamplingParams, build_engine
from firellava.toy.teacher import LLAMA2_CHAT_TEMPLATE
from tests.wandb_helpers import offline_runs

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"conversation": 8, "detail": 6, "complex_reasoning": 8}
SEED = 5
MAX_TOKENS = 12
TYPES = ("conversation", "detail", "complex_reasoning")


@pytest.fixture(scope="module")
def teacher_dir(toy_world, tmp_path_factory):
    """The toy world's (untrained) tiny Llama with the Llama-2 chat template: real engine, greedy, fast."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    shutil.copytree(toy_world["models"]["llm"], out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out


def spec(**kw):
    return DatagenSpec(counts=COUNTS, prompt_set="toy", seed=SEED, chunk_size=2, **kw)


def teacher(teacher_dir):
    return Teacher(model=str(teacher_dir), license="apache-2.0", commercial_use=True, name="tiny-teacher")


def sources(toy_world):
    return Sources(
        coco_instances=toy_world["coco_instances"],
        coco_captions=toy_world["coco_captions"],
        coco_images=toy_world["coco_image_dir"],
        image_folder=toy_world["image_folder"],
    )


PARAMS = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, stop=(), seed=SEED)


def factory(teacher_dir):
    return lambda: build_engine(
        EngineSpec("transformers", {"batch_size": 8}), str(teacher_dir), "tiny-teacher"
    )


@pytest.fixture(scope="module")
def reference(toy_world, teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "datagen"
    summary = generate_dataset(
        spec(), teacher(teacher_dir), sources(toy_world), factory(teacher_dir), PARAMS, out
    )
    return out, summary


def outputs(d: Path) -> dict[str, list[dict]]:
    files = [*TYPES, "rejected"]
    return {f: [json.loads(line) for line in (d / f"{f}.jsonl").read_text().splitlines()] for f in files}


def test_output_contract(reference, toy_world):
    out, summary = reference
    assert summary["dir"] == str(out.resolve())
    assert summary["requested"] == summary["generated"] == sum(COUNTS.values())
    got = outputs(out)
    records = [r for t in TYPES for r in got[t]]
    assert summary["parsed"] == len(records)
    assert summary["parsed"] + sum(summary["rejected"].values()) == summary["generated"]  # nothing silent
    assert len(got["rejected"]) == sum(summary["rejected"].values())
    ids = [r["id"] for r in records] + [r["id"] for r in got["rejected"]]
    assert len(ids) == len(set(ids)) == summary["generated"]
    for t in TYPES:
        for r in got[t]:
            assert r["type"] == t and r["source"] == "firellava_generated"
            assert (r["license"], r["model"]) == ("apache-2.0", "tiny-teacher")
            assert r["image"].startswith("coco/train2017/")
            assert (Path(toy_world["image_folder"]) / r["image"]).is_file()
            assert r["conversations"][0]["value"].startswith("<image>\n")
            check_record(r, f"{t}.jsonl")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["generated"] == summary["generated"] and stats["teacher"]["license"] == "apache-2.0"
    assert stats["prompt_tokens"] > 0 and 0 < stats["output_tokens"] <= MAX_TOKENS * stats["generated"]
    assert stats["output_tokens_per_s"] > 0 and 0 < stats["shared_prefix_fraction"] < 1
    assert {t: stats["per_type"][t]["requested"] for t in TYPES} == COUNTS
    card = (out / "DATACARD.md").read_text()
    assert "apache-2.0" in card and "| detail | 6 | 6 |" in card
    # Every record that parsed was grounded against the toy COCO file's three categories.
    grounding = stats["grounding"]
    assert grounding["categories"] == 3 and "## Grounding" in card and "Near-duplicates removed" in card
    checked = grounding["overall"]["records"]
    assert checked == summary["parsed"] + sum(
        summary["rejected"][r] for r in ("hallucination", "count_mismatch", "near_duplicate")
    )
    assert summary["grounding"]["overall"]["records"] == checked


def test_rerun_skips_finished_work(reference, toy_world, teacher_dir, tmp_path, monkeypatch):
    out, summary = reference
    before = outputs(out)

    def no_engine():
        raise AssertionError("a finished run must not load the engine again")

    # Inside the pipeline's wandb run (offline) the stage logs its stats and a sample table, outputs untouched.
    monkeypatch.setenv("WANDB_MODE", "offline")
    with stage_run(WandbSpec(mode="offline", group="g", dir=str(tmp_path)), "datagen"):
        again = generate_dataset(
            spec(wandb_samples=2), teacher(teacher_dir), sources(toy_world), no_engine, PARAMS, out
        )
    assert outputs(out) == before and again["generated"] == summary["generated"]
    (run,) = offline_runs(tmp_path).values()
    logged = {k: v for row in run["history"] for k, v in row.items()}
    assert logged["parsed"] == summary["parsed"] and "rejected/truncated" in logged
    assert logged["samples/nrows"] == sum(min(2, n) for n in summary["per_type"].values())


def test_other_settings_are_refused_not_mixed(reference, toy_world, teacher_dir):
    out, _ = reference
    with pytest.raises(FileExistsError, match="other settings \\(seed differ"):
        generate_dataset(
            DatagenSpec(counts=COUNTS, prompt_set="toy", seed=SEED + 1, chunk_size=2),
            teacher(teacher_dir),
            sources(toy_world),
            factory(teacher_dir),
            PARAMS,
            out,
        )


def test_engine_failure_mid_run_keeps_finished_chunks(reference, toy_world, teacher_dir, tmp_path):
    real = factory(teacher_dir)()
    calls = {"n": 0}

    class FailsOnThirdBatch:
        model_name = real.model_name
        tokenizer = real.tokenizer

        def generate(self, prompts, params):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("CUDA error: device lost")
            return real.generate(prompts, params)

    out = tmp_path / "datagen"
    args = (spec(), teacher(teacher_dir), sources(toy_world))
    with pytest.raises(RuntimeError, match="failed on chunk conversation-000002 .* 2 finished chunks") as err:
        generate_dataset(*args, FailsOnThirdBatch, PARAMS, out)
    assert "device lost" in str(err.value.__cause__)
    assert sorted(p.stem for p in (out / "parts").glob("*.jsonl")) == [
        "conversation-000000",
        "conversation-000001",
    ]
    generate_dataset(*args, lambda: real, PARAMS, out)
    assert outputs(out) == outputs(reference[0])


def test_sigkill_then_rerun_gives_the_uninterrupted_records(reference, toy_world, teacher_dir, tmp_path):
    """Through the CLI: kill -9 mid-run, rerun, compare with the uninterrupted run; summary.json gets an entry."""
    counts = ",".join(f"{k}:{v}" for k, v in COUNTS.items())
    cmd = [
        sys.executable,
        "-m",
        "firellava",
        "stages=[datagen]",
        f"paths.output_dir={tmp_path}",
        f"paths.coco_instances={toy_world['coco_instances']}",
        f"paths.coco_captions={toy_world['coco_captions']}",
        f"paths.coco_images={toy_world['coco_image_dir']}",
        f"paths.image_folder={toy_world['image_folder']}",
        f"teacher.model={teacher_dir}",
        "teacher.name=tiny-teacher",
        f"data_gen.counts={{{counts}}}",
        f"data_gen.seed={SEED}",
        "data_gen.chunk_size=2",
        f"engine.teacher.sampling.max_tokens={MAX_TOKENS}",
        "engine.teacher.sampling.temperature=0.0",  # greedy, as the reference run (the demo samples)
        "data_gen.decontamination=null",  # the reference run selects from every image too
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parts = tmp_path / "datagen" / "parts"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.jsonl"))) < 2 and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]!r}"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done_at_kill = len(list(parts.glob("*.jsonl")))
    assert 2 <= done_at_kill < 11, f"killed after {done_at_kill} of 11 chunks"
    assert not (tmp_path / "datagen" / "stats.json").exists()
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{11 - done_at_kill} of 11 chunks left" in rerun.stdout + rerun.stderr
    assert outputs(tmp_path / "datagen") == outputs(reference[0])
    entry = json.loads((tmp_path / "summary.json").read_text())["datagen"]
    assert {"dir", "requested", "generated", "parsed", "rejected"} <= set(entry)
    assert (entry["generated"], entry["parsed"]) == (reference[1]["generated"], reference[1]["parsed"])
