"""Decontamination against the eval images: COCO ids across the 2014/2017 names, perceptual hashes of copies
under other names, per-benchmark counts in the mix manifest and data card, removal by default, datagen's
selection."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from firellava.config import build
from firellava.core.decontam import (
    DecontamSpec,
    EvalImage,
    EvalImages,
    HashIndex,
    Matcher,
    coco_image_id,
    excluded_coco_ids,
    perceptual_hash,
)
from firellava.core.io import read_json
from firellava.eval.images import BenchmarkImages
from firellava.mix.stage import run
from firellava.toy.benchmarks import write_toy_benchmarks
from firellava.toy.data import build_toy_data
from firellava.toy.scenes import draw_scene, sample_scene
from tests.conftest import compose_config

PER_SOURCE = {
    "llava_instruct": 6,
    "sharegpt": 2,
    "vqav2": 14,
    "gqa": 4,
    "okvqa": 6,
    "ocr_vqa": 3,
    "a_okvqa": 6,
    "textcaps": 3,
    "refcoco": 6,
    "vg": 3,
}
CHECKED = ["vqav2", "gqa", "pope", "mm_vet", "mmbench", "llava_bench"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("COCO_val2014_000000123456.jpg", 123456),
        ("coco/train2017/000000123456.jpg", 123456),
        ("val2014/COCO_train2014_000000000042.png", 42),
        ("000000123456.jpg", 123456),
        ("gqa/images/2345.jpg", None),
        ("vg/VG_100K/000000123456x.jpg", None),
        ("textvqa/train_images/1234567890123456.jpg", None),
        ("SEED-Bench-image/900123.jpg", None),
        ("ocr_vqa/images/0000001234567.jpg", None),
    ],
)
def test_coco_ids_from_both_name_forms_and_no_others(name, expected):
    assert coco_image_id(name) == expected


def _scene_bytes(scene, quality: int, size: tuple[int, int] | None = None) -> bytes:
    im = draw_scene(scene)
    if size:
        im = im.resize(size)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Toy data and toy benchmarks whose POPE and MM-Vet reuse training scenes (as the toy world stage has it)."""
    out = tmp_path_factory.mktemp("decontam")
    (out / "toy_world").mkdir()
    data = build_toy_data(out / "toy_world", seed=5, coco_images=10, pretrain_images=0, per_source=PER_SOURCE)
    write_toy_benchmarks(
        data.root / "data" / "eval", CHECKED, seed=5, questions=12, shared=data.coco_scenes[:3]
    )
    (out / "scenes.json").write_text(json.dumps([s.image_id for s in data.coco_scenes[:3]]))
    # Generated records (as datagen writes them) on every COCO image: decontamination covers them too.
    (out / "datagen").mkdir()
    with (out / "datagen" / "conversation.jsonl").open("w") as f:
        for scene in data.coco_scenes:
            image = f"coco/train2017/{scene.image_id:012d}.jpg"
            turns = [
                {"from": "human", "value": "<image>\nWhat is here?"},
                {"from": "gpt", "value": "Shapes."},
            ]
            record = {"id": f"conversation-{scene.image_id:012d}", "image": image, "conversations": turns,
                      "source": "firellava_generated", "license": "apache-2.0", "type": "conversation"}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    return out


def test_a_reencoded_resized_copy_is_near_and_another_scene_is_not():
    rng = random.Random(0)
    a, b = sample_scene(rng, 1), sample_scene(rng, 2)
    original = perceptual_hash(_scene_bytes(a, 95))
    copy = perceptual_hash(_scene_bytes(a, 60, (a.width * 2, a.height * 2)))
    other = perceptual_hash(_scene_bytes(b, 95))
    index = HashIndex([(original, "a")], max_distance=4)
    assert index.near(copy) == {"a"}
    assert index.near(other) == set()
    assert perceptual_hash(b"not an image") is None
    # Within the distance, wherever the bits differ; one bit more is out, though it shares a band.
    assert index.near(original ^ 0b1111) == index.near(original ^ (0b1111 << 60)) == {"a"}
    assert index.near(original ^ 0b11111) == set()


def test_same_layout_other_colours_is_not_a_match(tmp_path):
    """pHash is grey: an orange square and a green one in the same place share it; the colours decide."""
    canvas = [Image.new("RGB", (80, 60), (235, 235, 235)) for _ in range(2)]
    for im, colour in zip(canvas, [(255, 140, 0), (80, 208, 120)]):  # the same grey
        im.paste(colour, (10, 10, 30, 30))
    paths = []
    for i, im in enumerate(canvas):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    evals = EvalImages({"b": [EvalImage("b", "0.png", path=paths[0])]})
    matcher = Matcher.build(evals, perceptual=True, max_distance=4)
    h1 = perceptual_hash(paths[1].read_bytes())
    assert matcher.hashes.near(h1)  # the grey hashes agree ...
    assert matcher.by_hash(h1, str(paths[1])) == set()  # ... the colours do not
    assert matcher.by_hash(perceptual_hash(paths[0].read_bytes()), str(paths[0])) == {"b"}


def mix_config(out: Path, *overrides: str):
    return compose_config(
        "experiment=demo",
        f"paths.output_dir={out}",
        "mix.image_workers=1",
        "mix.generated.files=[conversation.jsonl]",
        f"eval.benchmarks=[{','.join(CHECKED)}]",
        *overrides,
    )


def records_with(mix_json: Path, ids: list[int]) -> list[dict]:
    return [r for r in read_json(mix_json) if r.get("image") and coco_image_id(r["image"]) in ids]


def test_mix_removes_and_reports_per_benchmark(world, tmp_path):
    shared = json.loads((world / "scenes.json").read_text())
    pope_ids, mm_vet_ids = shared[:2], shared[2:]
    kept = run(mix_config(world, f"paths.mix_dir={tmp_path / 'kept'}", "mix.decontamination.remove=false"))
    on_pope = records_with(Path(kept["mix_json"]), pope_ids)
    on_mm_vet = records_with(Path(kept["mix_json"]), mm_vet_ids)
    assert on_pope and on_mm_vet  # the fixture has overlaps to find
    report = read_json(Path(kept["manifest"]))["decontamination"]
    assert report["action"] == "kept" and report["statement"].startswith("CONTAMINATED")
    assert "CONTAMINATED" in (tmp_path / "kept" / "DATACARD.md").read_text()

    summary = run(mix_config(world, f"paths.mix_dir={tmp_path / 'clean'}"))
    manifest = read_json(Path(summary["manifest"]))
    report = manifest["decontamination"]
    benches = report["benchmarks"]
    # POPE names them COCO_val2014_<id>; training has coco/train2017/<id>: one image, by id, no decoding.
    assert benches["pope"]["training_records"] == len(on_pope)
    assert benches["pope"]["matched_by"] == {"coco_id": len({r["image"] for r in on_pope})}
    # MM-Vet's is a re-encoded copy under its own name: only the perceptual hash finds it.
    assert benches["mm_vet"]["training_records"] == len(on_mm_vet)
    assert benches["mm_vet"]["matched_by"] == {"perceptual_hash": 1}
    assert benches["pope"]["removed"] and benches["mm_vet"]["removed"]
    # No false positives: the other benchmarks' images are their own scenes.
    assert all(benches[b]["training_records"] == 0 for b in CHECKED if b not in ("pope", "mm_vet"))
    assert report["records_removed"] == report["records_touching_benchmarks"] == len(on_pope) + len(on_mm_vet)
    assert records_with(Path(summary["mix_json"]), pope_ids + mm_vet_ids) == []
    assert summary["total"] == kept["total"] - report["records_removed"]
    assert sum(manifest["excluded"]["eval_overlap"].values()) == report["records_removed"]
    assert summary["decontamination"]["per_benchmark"]["pope"] == len(on_pope)
    assert benches["pope"]["by_source"]["firellava_generated"] == 2  # one generated record per image
    # The toy teacher's stand-in term travels with its records.
    [terms] = manifest["training_terms"]
    assert terms["source"] == "firellava_generated" and terms["allowed_families"] == ["toy-llama"]
    assert terms["records"] == summary["by_source"]["firellava_generated"] == 10 - 3
    card = (tmp_path / "clean" / "DATACARD.md").read_text()
    assert "## Decontamination against the evaluation images" in card and "they were removed" in card
    assert "## Terms on what this data may train" in card and "`toy-llama`" in card
    assert f"| pope | {benches['pope']['eval_images']} | {len(on_pope)} |" in card


def test_ids_only_finds_pope_but_not_the_copy(world, tmp_path):
    summary = run(
        mix_config(world, f"paths.mix_dir={tmp_path / 'ids'}", "mix.decontamination.perceptual_hash=false")
    )
    benches = read_json(Path(summary["manifest"]))["decontamination"]["benchmarks"]
    assert benches["pope"]["training_records"] > 0 and benches["mm_vet"]["training_records"] == 0


def test_missing_benchmark_files_fail_or_are_listed(world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mm_vet: .*not found"):
        run(mix_config(world, f"paths.mix_dir={tmp_path / 'a'}", f"eval.data_root={tmp_path / 'none'}"))
    summary = run(
        mix_config(
            world,
            f"paths.mix_dir={tmp_path / 'b'}",
            f"eval.data_root={tmp_path / 'none'}",
            "mix.decontamination.require_benchmark_files=false",
        )
    )
    report = read_json(Path(summary["manifest"]))["decontamination"]
    assert set(report["not_checked"]) == set(CHECKED) and report["records_touching_benchmarks"] == 0
    assert "Not checked (benchmark files missing)" in (tmp_path / "b" / "DATACARD.md").read_text()


def test_datagen_selection_leaves_out_benchmark_coco_images(world):
    cfg = mix_config(world)
    spec: DecontamSpec = build(cfg.data_gen).decontamination
    ids = excluded_coco_ids(spec)
    pope_ids = json.loads((world / "scenes.json").read_text())[:2]
    assert set(pope_ids) <= ids  # POPE's val2014 names give the training ids
    assert excluded_coco_ids(DecontamSpec(spec.benchmarks, remove=False)) == set()
    images = BenchmarkImages(["pope"], str(world / "toy_world" / "data" / "eval")).images()
    assert {i.coco_id for i in images.by_benchmark["pope"]} >= set(pope_ids)


class _Selected(Exception):
    pass


def test_datagen_selects_no_benchmark_image(world, monkeypatch, tmp_path):
    from firellava.datagen import stage as datagen

    cfg = mix_config(world)
    spec = build(cfg.data_gen)
    data = world / "toy_world" / "data"
    sources = datagen.Sources(
        str(data / "coco" / "annotations" / "instances_train.json"),
        str(data / "coco" / "annotations" / "captions_train.json"),
        str(data / "coco" / "train2017"),
        str(data),
    )

    def capture(ids, counts, seed):
        raise _Selected(sorted(ids))

    monkeypatch.setattr(datagen, "select_work", capture)
    pope_ids = json.loads((world / "scenes.json").read_text())[:2]
    with pytest.raises(_Selected) as chosen:
        datagen.generate_dataset(spec, build(cfg.teacher), sources, None, None, tmp_path / "a")
    assert len(chosen.value.args[0]) == 10 - 2 and not set(pope_ids) & set(chosen.value.args[0])
    with pytest.raises(_Selected) as chosen:
        datagen.generate_dataset(
            dataclasses.replace(spec, decontamination=None),
            build(cfg.teacher),
            sources,
            None,
            None,
            tmp_path / "b",
        )
    assert set(pope_ids) <= set(chosen.value.args[0])
