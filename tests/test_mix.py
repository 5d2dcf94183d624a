"""The mix stage on the toy world: classification, licensing, quotas, validation, outputs and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from firellava.config import build
from firellava.core.instructions import (
    OPTION_LETTER,
    REGION_BOX_PROMPT,
    REGION_DESCRIPTION_PROMPT,
    SHORT_ANSWER,
)
from firellava.core.io import read_json, sha256_file
from firellava.mix.io import JsonListReader
from firellava.mix.sources import Classifier
from firellava.mix.stage import run
from firellava.toy.data import build_toy_data

REPO = Path(__file__).resolve().parents[1]
PER_SOURCE = {
    "llava_instruct": 12,
    "sharegpt": 6,
    "vqav2": 14,
    "gqa": 6,
    "okvqa": 8,
    "ocr_vqa": 5,
    "a_okvqa": 6,
    "textcaps": 4,
    "refcoco": 6,
    "vg": 5,
}
PERMITTED = {k: v for k, v in PER_SOURCE.items() if k not in ("llava_instruct", "sharegpt")}
GENERATED_PER_FILE = 4
TYPES = ("conversation", "detail", "complex_reasoning")


def write_generated(datagen: Path, image_folder: Path, license: str = "apache-2.0") -> int:
    """Records shaped like the datagen stage's `<type>.jsonl`."""
    datagen.mkdir(parents=True, exist_ok=True)
    images = sorted((image_folder / "coco" / "train2017").glob("*.jpg"))[:GENERATED_PER_FILE]
    for kind in TYPES:
        with (datagen / f"{kind}.jsonl").open("w") as f:
            for p in images:
                record = {
                    "id": p.stem,
                    "image": f"coco/train2017/{p.name}",
                    "conversations": [
                        {"from": "human", "value": f"<image>\nWhat is in this {kind} picture?"},
                        {"from": "gpt", "value": "Coloured shapes on a plain background."},
                    ],
                    "source": "firellava_generated",
                    "license": license,
                    "model": "toy-teacher",
                    "type": kind,
                }
                f.write(json.dumps(record) + "\n")
    return GENERATED_PER_FILE * len(TYPES)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A pristine output dir: toy data under toy_world/ and generated records under datagen/."""
    out = tmp_path_factory.mktemp("mixworld")
    (out / "toy_world").mkdir()
    data = build_toy_data(out / "toy_world", seed=3, coco_images=16, pretrain_images=0, per_source=PER_SOURCE)
    assert data.counts["mix_per_source"] == PER_SOURCE
    write_generated(out / "datagen", data.image_folder)
    return out


@pytest.fixture
def out(world, tmp_path) -> Path:
    """A private copy of the world, so a test may damage it."""
    dst = tmp_path / "out"
    shutil.copytree(world, dst)
    return dst


def config(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                "experiment=demo",
                f"paths.output_dir={out}",
                "mix.image_workers=1",
                # this world has no benchmark files; decontamination has its own tests (test_decontam.py)
                "mix.decontamination.require_benchmark_files=false",
                *overrides,
            ],
        )


def mix_path(out: Path) -> Path:
    return out / "toy_world" / "data" / "llava_v1_5_mix665k.json"


def rewrite_mix(out: Path, edit) -> None:
    path = mix_path(out)
    records = json.loads(path.read_text())
    edit(records)
    path.write_text(json.dumps(records))


def test_registry_markers_are_the_kernels_llava_prompts():
    """The registry spells LLaVA's prompts out, as data a reviewer reads; they must be the ones the rest of
    the project writes and asks (`core.instructions`)."""
    raw = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "mix" / "sources" / "llava_1_5_mix665k.yaml"))
    markers = {
        name: (entry.get("first_turn_suffixes", []), entry.get("first_turn_prefixes", []))
        for name, entry in raw.items()
        if entry.get("first_turn_suffixes") or entry.get("first_turn_prefixes")
    }
    assert markers == {
        "a_okvqa": ([OPTION_LETTER], []),
        "refcoco": ([], [REGION_DESCRIPTION_PROMPT.strip(), REGION_BOX_PROMPT.strip()]),
        "vqav2": ([SHORT_ANSWER], []),
        "okvqa": ([SHORT_ANSWER], []),
    }


def test_classifier_gives_every_toy_record_its_source(world):
    spec = build(config(world).mix)
    classifier = Classifier(list(spec.sources.values()))
    for index, record in JsonListReader(mix_path(world)):
        classifier.classify(index, record)
    assert dict(classifier.result.counts) == PER_SOURCE
    assert not classifier.result.unclassified and not classifier.result.ambiguous


def test_demo_mix_keeps_permissive_and_generated_with_provenance(out):
    summary = run(config(out))
    generated = GENERATED_PER_FILE * len(TYPES)
    assert summary["by_source"] == {**PERMITTED, "firellava_generated": generated}
    assert summary["total"] == sum(PERMITTED.values()) + generated
    assert summary["excluded"]["noncommercial"] == PER_SOURCE["llava_instruct"] + PER_SOURCE["sharegpt"]
    mix_dir = Path(summary["dir"])
    assert sorted(p.name for p in mix_dir.iterdir()) == ["DATACARD.md", "firellava_mix.json", "manifest.json"]

    records = read_json(summary["mix_json"])
    assert len(records) == summary["total"]
    assert {r["source"] for r in records} == set(summary["by_source"])
    assert all(r["source"] not in ("llava_instruct", "sharegpt") and "image" in r for r in records)
    manifest = read_json(mix_dir / "manifest.json")
    assert manifest["output"]["sha256"] == sha256_file(summary["mix_json"])
    assert manifest["commercial_use"]["commercially_usable"] is True
    assert manifest["sources"]["llava_instruct"]["license"].startswith("CC BY-NC")
    assert manifest["sources"]["firellava_generated"]["license"] == "apache-2.0"
    assert {r["source"]: r["license"] for r in records}["vqav2"] == manifest["sources"]["vqav2"]["license"]
    assert manifest["classification"]["counts"] == PER_SOURCE
    hashed = {Path(i["path"]).name: i["sha256"] for i in manifest["inputs"]}
    assert hashed["llava_v1_5_mix665k.json"] == sha256_file(mix_path(out))
    assert {
        "conversation.jsonl",
        "llava_instruct_150k.json",
        "OpenEnded_mscoco_train2014_questions.json",
    } <= set(hashed)
    card = (mix_dir / "DATACARD.md").read_text()
    assert "non-commercial sources were refused" in card and "`firellava_generated`" in card

    # A second run refuses to overwrite; with overwrite and the same seed the output is byte-identical.
    with pytest.raises(FileExistsError, match="mix.overwrite=true"):
        run(config(out))
    run(config(out, "mix.overwrite=true"))
    assert sha256_file(summary["mix_json"]) == manifest["output"]["sha256"]
    run(config(out, "mix.overwrite=true", "seed=5"))
    reseeded = read_json(summary["mix_json"])
    assert [r["id"] for r in reseeded] != [r["id"] for r in records]
    assert sorted(json.dumps(r) for r in reseeded) == sorted(json.dumps(r) for r in records)


def test_noncommercial_only_when_allowed_and_said_in_plain_words(out):
    with pytest.raises(ValueError, match=r"non-commercial source\(s\) \['sharegpt'\]"):
        run(config(out, "+mix.quotas.sharegpt=2"))
    summary = run(config(out, "mix.allow_noncommercial=true", "+mix.quotas.sharegpt=2"))
    assert summary["by_source"]["llava_instruct"] == PER_SOURCE["llava_instruct"]
    assert summary["by_source"]["sharegpt"] == 2
    manifest = read_json(Path(summary["dir"]) / "manifest.json")
    assert manifest["commercial_use"]["commercially_usable"] is False
    assert manifest["commercial_use"]["statement"].startswith("NOT FOR COMMERCIAL USE")
    assert "NOT FOR COMMERCIAL USE" in (Path(summary["dir"]) / "DATACARD.md").read_text()
    text_only = [r for r in read_json(summary["mix_json"]) if r["source"] == "sharegpt"]
    assert len(text_only) == 2 and all("image" not in r for r in text_only)


def test_quotas_and_target_total(out):
    summary = run(config(out, "+mix.quotas.vqav2=3", "+mix.quotas.gqa=0.5", "mix.target_total=50"))
    by_source = summary["by_source"]
    assert by_source["vqav2"] == 3 and by_source["gqa"] == 3
    others = sum(PERMITTED.values()) - (14 - 3) - (6 - 3)
    # The fill source (generated) takes exactly what the target leaves.
    assert summary["total"] == 50 and by_source["firellava_generated"] == 50 - others
    assert summary["excluded"]["quota"] == (14 - 3) + (6 - 3) + (12 - (50 - others))
    shutil.rmtree(summary["dir"])
    with pytest.raises(ValueError, match=r"mix.quotas.vqav2=99 but source 'vqav2' has only 14"):
        run(config(out, "+mix.quotas.vqav2=99"))
    with pytest.raises(ValueError, match=r"needs \d+ records from 'firellava_generated' but it has only 12"):
        run(config(out, "mix.target_total=1000"))
    with pytest.raises(ValueError, match="not in the mix"):
        run(config(out, "+mix.quotas.coyo=5"))
    assert not (out / "mix").exists()


def test_corrupt_json_reports_position_and_leaves_nothing(out):
    text = mix_path(out).read_text()
    cut = text.index('"conversations"', len(text) // 2)
    broken = text[:cut] + text[cut + 1 :]
    mix_path(out).write_text(broken)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(broken)
    at = f"line {expected.value.lineno}, column {expected.value.colno}"
    with pytest.raises(ValueError, match=rf"llava_v1_5_mix665k.json: invalid JSON at {at}: "):
        run(config(out))
    assert not (out / "mix").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".mix")]


def test_missing_and_broken_images_listed_or_dropped(out):
    data = out / "toy_world" / "data"
    records = json.loads(mix_path(out).read_text())
    gqa = [r for r in records if r.get("image", "").startswith("gqa/")]
    (data / gqa[0]["image"]).unlink()
    vg = [r for r in records if r.get("image", "").startswith("vg/")]
    (data / vg[0]["image"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError) as err:
        run(config(out))
    message = str(err.value)
    assert "1 record(s) with a missing image" in message and gqa[0]["id"] in message
    assert "1 record(s) with an image that does not decode" in message and vg[0]["id"] in message
    assert not (out / "mix").exists()

    summary = run(config(out, "mix.drop_missing_images=true"))
    assert summary["excluded"]["missing_image"] == 1 and summary["excluded"]["undecodable_image"] == 1
    assert summary["by_source"]["gqa"] == PER_SOURCE["gqa"] - 1
    manifest = read_json(Path(summary["dir"]) / "manifest.json")
    assert manifest["images"]["missing_image"] == [gqa[0]["image"]]
    assert [d["id"] for d in manifest["dropped_records"]["undecodable_image"]] == [vg[0]["id"]]


def test_unclassified_records_are_all_listed(out):
    def edit(records):
        records.append(
            {"id": "stray_1", "image": "laion/0001.jpg", "conversations": records[0]["conversations"]}
        )
        vqa = next(
            r
            for r in records
            if r.get("image", "").startswith("coco/")
            and r["conversations"][0]["value"].endswith("single word or phrase.")
        )
        vqa["id"] = "stray_2"
        vqa["conversations"][0]["value"] = (
            "<image>\nA question no annotation file has?\nAnswer the question using a single word or phrase."
        )

    rewrite_mix(out, edit)
    with pytest.raises(ValueError, match=r"2 record\(s\) match no source") as err:
        run(config(out))
    assert "'stray_1'" in str(err.value) and "'stray_2'" in str(err.value)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda r: r["conversations"][0].update(value="<image>\n<image>\nTwice?"), "appears 2 times"),
        (
            lambda r: r["conversations"][1].update(value=r["conversations"][1]["value"] + " <image>"),
            "outside the first",
        ),
        (lambda r: r["conversations"].append({"from": "human", "value": "and?"}), "expected human/gpt pairs"),
        (
            lambda r: r["conversations"][1].update({"from": "human"}),
            "field 'conversations[1].from': expected 'gpt'",
        ),
    ],
)
def test_invalid_records_fail_naming_record_and_field(out, damage, problem):
    def edit(records):
        # A GQA record (own image folder): the damage cannot change which source it is.
        damage(next(r for r in records if r.get("image", "").startswith("gqa/")))

    rewrite_mix(out, edit)
    with pytest.raises(ValueError, match="1 invalid record") as err:
        run(config(out))
    assert problem in str(err.value) and "gqa record" in str(err.value)
    summary = run(config(out, "mix.drop_invalid=true"))
    assert summary["excluded"]["invalid"] == 1 and summary["by_source"]["gqa"] == PER_SOURCE["gqa"] - 1


def test_text_only_record_with_image_token_is_invalid(out):
    def edit(records):
        r = next(r for r in records if "image" not in r)
        r["conversations"][0]["value"] = "<image>\n" + r["conversations"][0]["value"]

    rewrite_mix(out, edit)
    with pytest.raises(ValueError, match=r"sharegpt record \d+ .*<image> in a text-only record"):
        run(config(out, "mix.allow_noncommercial=true"))


def test_generated_provenance_must_match(out):
    write_generated(out / "datagen", out / "toy_world" / "data", license="cc-by-nc-4.0")
    with pytest.raises(ValueError, match=r"conversation.jsonl: line 1 .*field 'license' is 'cc-by-nc-4.0'"):
        run(config(out))
    shutil.rmtree(out / "datagen")
    with pytest.raises(FileNotFoundError, match="run the datagen stage first"):
        run(config(out))
    summary = run(config(out, "mix.generated.files=[]"))
    assert "firellava_generated" not in summary["by_source"]


def test_generated_records_of_every_datagen_shard(out):
    """A multi-node datagen run leaves `shard-i-of-n/`; the mix reads them all, and only a complete set."""
    shutil.rmtree(out / "datagen")
    shards = [out / "datagen" / f"shard-{i:05d}-of-00002" for i in range(2)]
    for shard in shards:
        write_generated(shard, out / "toy_world" / "data")
    summary = run(config(out))
    assert summary["by_source"]["firellava_generated"] == 2 * GENERATED_PER_FILE * len(TYPES)
    shutil.rmtree(shards[1])
    with pytest.raises(ValueError, match="not one complete set"):
        run(config(out, "mix.overwrite=true"))


def test_cli_records_the_stage_in_summary(out):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "firellava",
            "stages=[mix]",
            f"paths.output_dir={out.name}",  # relative, as in `make demo`
            "mix.image_workers=1",
            "mix.decontamination.require_benchmark_files=false",
        ],
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = read_json(out / "summary.json")["mix"]
    assert entry["total"] == sum(PERMITTED.values()) + GENERATED_PER_FILE * len(TYPES)
    assert set(entry) >= {"dir", "total", "by_source", "excluded", "mix_json", "wall_s", "config_digest"}
    # Absolute: the notebooks read them from their own working directory.
    assert (entry["dir"], entry["mix_json"]) == (str(out / "mix"), str(out / "mix" / "firellava_mix.json"))
    md = (out / "summary.md").read_text()
    assert f"| total | {entry['total']} |" in md and "| by_source.vqav2 |" in md and "| mix |" in md
