"""The toy world's model cache: a second world with the same config and code copies the first one's models
byte for byte and says so; another config misses."""

from __future__ import annotations

from pathlib import Path

from firellava.core.io import sha256_file
from firellava.toy.model_cache import model_key
from firellava.toy.stage import build_toy_world
from tests.conftest import toy_world_spec

TINY = dict(
    seed=3,
    coco_images=4,
    pretrain_images=4,
    per_source={"vqav2": 4, "gqa": 2},
    vocab_size=400,
    vision_pretrain={"steps": 2, "scenes": 16},
    llm_pretrain={"steps": 2, "batch_size": 2},
    teacher={"steps": 1, "scenes": 1, "batch_size": 1},
    benchmark_questions=2,
)


def models(world: dict) -> dict[str, str]:
    root = Path(world["dir"]) / "models"
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_second_world_reuses_the_cached_models(tmp_path):
    cache = tmp_path / "cache"
    spec = toy_world_spec(cache_dir=str(cache), **TINY)
    first = build_toy_world(tmp_path / "a", spec)
    assert first["model_cache"]["hit"] is False and (cache / first["model_cache"]["key"]).is_dir()
    second = build_toy_world(tmp_path / "b", spec)
    assert second["model_cache"] == {**first["model_cache"], "hit": True}
    assert models(second) == models(first) and any(k.endswith("model.safetensors") for k in models(first))
    assert second["llm_probe"] == first["llm_probe"] and second["vision_probe"] == first["vision_probe"]
    assert second["teacher_training"]["dir"] == second["models"]["teacher"]
    # What only the benchmark files or the cache location depend on leaves the key alone; the models' config not.
    assert model_key(toy_world_spec(**{**TINY, "benchmark_questions": 5})) == model_key(spec)
    assert model_key(toy_world_spec(**{**TINY, "seed": 4})) != model_key(spec)
    assert model_key(toy_world_spec(**{**TINY, "llm_pretrain": {"steps": 3}})) != model_key(spec)
