"""Licence terms on what data may train (mix manifest -> finetune check, refusal and override) and the model card
written with the finetuned checkpoint (refreshed by the eval stage)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from firellava.config import build
from firellava.core.io import read_json, write_json
from firellava.core.model_builder import ModelSpec
from firellava.core.model_card import (
    CARD_DATA_FILE,
    card_data,
    refresh_model_card,
    render_model_card,
)
from firellava.core.terms import TrainingTerms, terms_problems
from firellava.mix.terms import render_section as render_terms
from firellava.mix.terms import training_terms
from firellava.train.export import save_card
from firellava.train.launch import launch
from firellava.train.terms import check_terms
from tests.conftest import compose_config

LLAMA2 = TrainingTerms(
    name="Llama 2 Community License, section 1.b.v",
    statement="Outputs may not improve any other large language model (excluding Llama 2 or derivative works).",
    allowed_families=["llama-2"],
    url="https://ai.meta.com/llama/license/",
)


def test_terms_need_families_and_name_the_source_when_they_refuse():
    with pytest.raises(ValueError, match="allowed_families"):
        TrainingTerms("x", "y", [])
    with pytest.raises(ValueError, match="allowed_families"):
        TrainingTerms("x", "y", "llama-2")  # a string is not a list of families
    applied = [{"source": "firellava_generated", "records": 1200, **LLAMA2.as_dict()}]
    assert terms_problems(applied, "llama-2") == []
    [problem] = terms_problems(applied, "mistral")
    assert "firellava_generated (1,200 records)" in problem and "'mistral'" in problem
    assert "model.family is not set" in terms_problems(applied, None)[0]


def test_the_production_config_declares_the_teacher_term_and_an_allowed_family():
    cfg = compose_config("experiment=firellava_13b")
    mix, model = build(cfg.mix), build(cfg.model)
    assert mix.generated.terms.allowed_families == ["llama-2"]
    assert "1.b.v" in mix.generated.terms.name
    assert model.family == "llama-2" and "vicuna" in model.llm
    demo = compose_config("experiment=demo")
    assert build(demo.model).family in build(demo.mix).generated.terms.allowed_families


class _Source:
    def __init__(self, terms):
        self.terms = terms


def manifest_with_terms(selected: dict[str, int]) -> dict:
    """A mix manifest as the mix stage writes it (only the parts the card and the check read)."""
    sources = {"vqav2": _Source(None), "firellava_generated": _Source(LLAMA2)}
    return {
        "total": sum(selected.values()),
        "by_source": selected,
        "sources": {
            "vqav2": {"license": "CC BY 4.0", "commercial_use": True},
            "firellava_generated": {"license": "llama2", "commercial_use": True},
            "llava_instruct": {"license": "CC BY-NC 4.0", "commercial_use": False},
        },
        "commercial_use": {
            "statement": "Every record comes from a commercial source.",
            "commercially_usable": True,
        },
        "training_terms": training_terms(sources, selected),
        "decontamination": {
            "statement": "3 training record(s) used an image that a benchmark evaluates on; they were removed.",
            "action": "removed",
            "records_touching_benchmarks": 3,
            "benchmarks": {
                "pope": {"eval_images": 500, "training_records": 3, "training_images": 2, "removed": True},
                "mm_vet": {"eval_images": 200, "training_records": 0, "training_images": 0, "removed": False},
            },
            "not_checked": {"mmbench": "missing"},
        },
    }


def test_manifest_terms_only_for_selected_sources():
    assert training_terms({"g": _Source(LLAMA2)}, {"g": 0}) == []
    [entry] = manifest_with_terms({"vqav2": 10, "firellava_generated": 7})["training_terms"]
    assert entry["source"] == "firellava_generated" and entry["records"] == 7
    assert entry["allowed_families"] == ["llama-2"]


@pytest.fixture
def mix_dir(tmp_path) -> Path:
    d = tmp_path / "mix"
    d.mkdir()
    write_json(d / "manifest.json", manifest_with_terms({"vqav2": 10, "firellava_generated": 7}))
    (d / "firellava_mix.json").write_text("[]")
    return d


def test_check_allows_the_family_refuses_others_and_overrides_loudly(mix_dir, caplog):
    data = mix_dir / "firellava_mix.json"
    vicuna = ModelSpec("clip", "lmsys/vicuna-13b-v1.5", family="llama-2")
    manifest, check = check_terms(data, vicuna, override=False)
    assert manifest["total"] == 17 and not check["overridden"] and check["problems"] == []
    assert "'llama-2' is allowed" in check["statement"]

    other = ModelSpec("clip", "mistralai/Mistral-7B-v0.1", family="mistral")
    with pytest.raises(PermissionError, match=r"(?s)Mistral-7B.*firellava_generated \(7 records\).*1\.b\.v"):
        check_terms(data, other, override=False)
    with pytest.raises(PermissionError, match="model.family is not set"):
        check_terms(data, ModelSpec("clip", "some/llm"), override=False)

    with caplog.at_level(logging.WARNING):
        _, check = check_terms(data, other, override=True)
    assert check["overridden"] and check["statement"].startswith("TERMS OVERRIDDEN")
    assert "TRAINING TERMS OVERRIDDEN" in caplog.text


def test_data_without_a_manifest_is_trained_and_said_unchecked(tmp_path, caplog):
    (tmp_path / "data.json").write_text("[]")
    with caplog.at_level(logging.WARNING):
        manifest, check = check_terms(tmp_path / "data.json", ModelSpec("clip", "x", family="any"), False)
    assert manifest is None and check["manifest"] is None and "not checked" in check["statement"]
    assert "no mix manifest" in caplog.text
    card = render_model_card(card_data({"llm": "x"}, manifest, check))
    assert "came without a mix manifest" in card


def test_finetune_stage_refuses_before_any_process_starts(tmp_path, monkeypatch):
    cfg = compose_config("experiment=demo", f"paths.output_dir={tmp_path}", "model.family=mistral")
    mix = Path(cfg.paths.mix_dir)
    mix.mkdir(parents=True)
    write_json(mix / "manifest.json", manifest_with_terms({"firellava_generated": 5}))
    started = []
    monkeypatch.setattr(
        "firellava.train.launch.run_launcher", lambda cmd, env, *a, **k: started.append(cmd) or 0
    )
    with pytest.raises(PermissionError, match="train.allow_terms_override=true"):
        launch(build(cfg.train), build(cfg.model), build(cfg.deepspeed), "finetune")
    assert started == []
    # With the override the launcher goes on and hands the card (with the override said) to the workers.
    allowed = compose_config(
        "experiment=demo",
        f"paths.output_dir={tmp_path}",
        "model.family=mistral",
        "train.allow_terms_override=true",
    )
    with pytest.raises(RuntimeError, match="deepspeed launcher"):  # no worker ran: no result
        launch(build(allowed.train), build(allowed.model), build(allowed.deepspeed), "finetune")
    job = json.loads((Path(cfg.paths.finetune_dir) / ".launch" / "job.json").read_text())
    assert job["card"]["terms"]["overridden"] is True and len(started) == 1


def test_model_card_from_manifest_training_and_eval(mix_dir, tmp_path):
    model = ModelSpec("openai/clip-vit-large-patch14-336", "lmsys/vicuna-13b-v1.5", family="llama-2")
    manifest, check = check_terms(mix_dir / "firellava_mix.json", model, override=False)
    card = card_data(
        {"llm": model.llm, "family": model.family, "vision_tower": model.vision_tower}, manifest, check
    )
    ckpt = tmp_path / "finetune"
    ckpt.mkdir()
    save_card(ckpt, card, {"steps": 12, "final_loss": 0.5, "zero_stage": 3, "runtime": {"device": "cpu"}})
    text = (ckpt / "README.md").read_text()
    assert read_json(ckpt / CARD_DATA_FILE)["training"]["steps"] == 12
    assert (
        "| `firellava_generated` | llama2 | yes | 7 |" in text
        and "| `vqav2` | CC BY 4.0 | yes | 10 |" in text
    )
    assert "llava_instruct" not in text  # only sources with selected records
    assert "Llama 2 Community License, section 1.b.v" in text and "`llama-2`" in text
    assert "| pope | 500 | 3 | yes |" in text and "Not checked (benchmark files missing): mmbench" in text
    assert "12 steps, final loss 0.5" in text and "Not evaluated yet" in text

    results = {
        "model": "finetune-abc",
        "benchmarks": {
            "pope": {"split": "test", "metric": "F1", "score": 85.9, "published_llava_1_5_13b": 85.9, "questions": 8910},
            "vqav2": {"split": "test-dev", "metric": "accuracy", "score": None, "published_llava_1_5_13b": 80.0},
        },
    }  # fmt: skip
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    assert refresh_model_card(ckpt, results, eval_dir) == ckpt / "README.md"
    text = (ckpt / "README.md").read_text()
    assert "| pope | test | F1 | 85.9 | 85.9 | 8910 |" in text and "server-scored" in text
    assert (eval_dir / "MODEL_CARD.md").read_text() == text
    assert refresh_model_card(eval_dir, results, eval_dir) is None  # no card data: not our checkpoint


def test_data_card_lists_the_terms():
    manifest = manifest_with_terms({"firellava_generated": 5})
    section = "\n".join(render_terms(manifest["training_terms"]))
    assert (
        "## Terms on what this data may train" in section
        and "Models this data may train: `llama-2`" in section
    )
    assert "No selected source limits" in "\n".join(render_terms([]))
