"""The mix leaves out generated records that near-duplicate another source's record of the same image, and counts
them in the manifest, the data card and the stage summary."""

from __future__ import annotations

import json
from pathlib import Path

from firellava.core.instructions import SHORT_ANSWER
from firellava.core.io import read_json, write_json
from firellava.datagen.grounding import GroundingSpec, GroundingTally, Lexicon, check_answers, truth_of
from firellava.mix.stage import run
from firellava.toy.data import build_toy_data
from tests.test_mix import PER_SOURCE, config, mix_path


def generated_record(rid: str, image: str, conversations: list[dict]) -> dict:
    return {
        "id": rid,
        "image": image,
        "conversations": conversations,
        "source": "firellava_generated",
        "license": "apache-2.0",
        "model": "toy-teacher",
        "type": "conversation",
    }


def test_generated_near_duplicate_of_same_image_is_dropped_and_counted(tmp_path):
    out = tmp_path / "out"
    (out / "toy_world").mkdir(parents=True)
    build_toy_data(out / "toy_world", seed=3, coco_images=16, pretrain_images=0, per_source=PER_SOURCE)
    mix = json.loads(mix_path(out).read_text())
    # VQAv2 / OK-VQA records (permissive; LLaVA-Instruct's, also on COCO images, are refused).
    vqa = [r for r in mix if r.get("image") and SHORT_ANSWER in r["conversations"][0]["value"]]
    assert len(vqa) >= 2
    a, b = vqa[0], next(r for r in vqa if r["image"] != vqa[0]["image"])
    own = [
        {"from": "human", "value": "<image>\nWhat do you see in this picture of coloured shapes today?"},
        {"from": "gpt", "value": "Several coloured shapes drawn on a plain light background, nothing else."},
    ]
    records = [
        generated_record("copy-same-image", a["image"], a["conversations"]),  # dropped
        generated_record("copy-other-image", b["image"], a["conversations"]),  # another image: kept
        generated_record("own-text", a["image"], own),  # same image, its own text: kept
    ]
    (out / "datagen").mkdir()
    for kind in ("conversation", "detail", "complex_reasoning"):
        lines = [json.dumps(r | {"type": kind}) for r in records] if kind == "conversation" else []
        (out / "datagen" / f"{kind}.jsonl").write_text("".join(line + "\n" for line in lines))

    summary = run(config(out))
    card = (Path(summary["dir"]) / "DATACARD.md").read_text()
    assert summary["generated_grounding"] is None and "Not available" in card  # no stats.json yet

    # The datagen stage's stats.json: its grounding figures travel into the mix's manifest, card and summary.
    lexicon = Lexicon(["circle", "square"])
    tally = GroundingTally(("conversation", "detail", "complex_reasoning"), 3)
    truth = truth_of([], [], lexicon)
    tally.add("conversation", "c-1", check_answers(["A red square."], truth, lexicon))
    tally.add("conversation", "c-2", check_answers(["Nothing."], truth, lexicon))
    write_json(
        out / "datagen" / "stats.json",
        {
            "rejected": {"hallucination": 1, "count_mismatch": 0, "near_duplicate": 2, "duplicate": 0},
            "grounding": {**GroundingSpec().__dict__, "categories": 2, **tally.summary()},
        },
    )
    summary = run(config(out, "mix.overwrite=true"))
    manifest = read_json(Path(summary["manifest"]))
    checks = manifest["generated_checks"]
    assert checks["rejected"]["hallucination"] == 1 and checks["rejected"]["near_duplicate"] == 2
    assert (
        checks["overall"]["chair_s"] == 0.5
        and checks["per_type"]["conversation"]["examples"][0]["id"] == "c-1"
    )
    assert summary["generated_grounding"]["chair_i"] == 1.0
    nd = manifest["near_duplicates"]
    assert nd["enabled"] and nd["removed"] == 1 and nd["shared_images"] == 2 and nd["generated_checked"] == 3
    assert manifest["excluded"]["near_duplicate"] == {"firellava_generated": 1}
    (entry,) = manifest["dropped_records"]["near_duplicate"]
    assert entry["id"] == "copy-same-image" and entry["jaccard"] >= 0.8 and entry["duplicate_of"]["source"]
    assert summary["by_source"]["firellava_generated"] == 2 and summary["near_duplicates_removed"] == 1
    kept = {r["id"] for r in read_json(Path(summary["mix_json"])) if r["source"] == "firellava_generated"}
    assert kept == {"copy-other-image", "own-text"}
    card = (Path(summary["dir"]) / "DATACARD.md").read_text()
    assert "## Near-duplicates" in card and "1 generated records removed" in card
    assert "## Grounding of the generated records" in card and '"square" -> square (not in the image)' in card

    off = run(config(out, "mix.near_duplicates.enabled=false", "mix.overwrite=true"))
    assert off["by_source"]["firellava_generated"] == 3 and off["near_duplicates_removed"] is None
