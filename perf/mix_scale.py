"""The mix stage at production scale: a synthetic 665,298-record mix665k file with the real per-source counts
(and roughly the real 1 GB size), its reference files and 158K generated records; then the stage's classify +
validate + quota + shuffle + write step with a target of 588,000, timed in a fresh process with its peak memory.
Images are not decoded (the check is replaced by one that accepts every path): that step scales with the image
count and the cores, and is measured separately in production. Decontamination runs by COCO id against synthetic
benchmark image lists the size of POPE's (500 val2014 images, all also training images here) and VQAv2 test-dev's
(36,807 test2015 images); its perceptual hashing decodes images and is measured by perf/decontam_hash.py.

Side by side, in the same way: the stage without its near-duplicate check (generated vs other sources of the same
image, MinHash LSH), to show that check's cost, and a plain `json.load` of the same input file, what LLaVA-style
tooling does.

    .venv/bin/python perf/mix_scale.py                # full scale (about 1 GB written under --workdir)
    .venv/bin/python perf/mix_scale.py --scale 0.05   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from firellava.core.instructions import (  # noqa: E402
    OPTION_LETTER,
    REGION_DESCRIPTION_PROMPT,
    SHORT_ANSWER,
    TEXTCAPS_PROMPT,
)
from firellava.core.io import write_jsonl  # noqa: E402
from firellava.core.records import conversation  # noqa: E402

# Published counts and a rough mean text length per record (bytes), so the file is ~1 GB.
COUNTS = {
    "llava_instruct": (157_712, 2000),
    "sharegpt": (40_688, 6000),
    "vqav2": (82_783, 600),
    "gqa": (72_140, 800),
    "okvqa": (8_998, 200),
    "ocr_vqa": (80_000, 500),
    "a_okvqa": (66_160, 300),
    "textcaps": (21_953, 250),
    "refcoco": (48_447, 1000),
    "vg": (86_417, 1200),
}
GENERATED = {"conversation": 58_000, "detail": 23_000, "complex_reasoning": 77_000}
REGION = REGION_DESCRIPTION_PROMPT + "[0.12, 0.34, 0.56, 0.78]"
WORDS = [
    "the",
    "a",
    "red",
    "blue",
    "green",
    "shape",
    "square",
    "circle",
    "left",
    "right",
    "above",
    "below",
    "large",
    "small",
    "café",
    "naïve",
    "東京",
    "two",
]


def text(rng: random.Random, n_bytes: int) -> str:
    return " ".join(rng.choices(WORDS, k=max(1, n_bytes // 6)))


def turns(rng: random.Random, first: str, n_bytes: int, n_pairs: int, image: bool = True) -> list[dict]:
    pairs = []
    for i in range(n_pairs):
        q = first if i == 0 else text(rng, 40) + "?"
        pairs.append((q, text(rng, n_bytes // n_pairs)))
    return conversation(pairs, image=image)


def build(work: Path, scale: float) -> dict[str, Path]:
    rng = random.Random(0)
    data = work / "data"
    (data / "vqav2").mkdir(parents=True)
    (data / "okvqa").mkdir()
    coco_ids = rng.sample(range(1, 600_000), 120_000)
    records, llava_ref = [], []
    questions: dict[str, list[dict]] = {"vqav2": [], "okvqa": []}
    for name, (count, size) in COUNTS.items():
        for i in range(round(count * scale)):
            cid = rng.choice(coco_ids)
            coco = f"coco/train2017/{cid:012d}.jpg"
            if name == "sharegpt":
                records.append(
                    {"id": f"s{i}_0", "model": "", "conversations": turns(rng, "hi", size, 3, False)}
                )
                continue
            if name in ("vqav2", "okvqa"):
                q = f"{name} question {i} about {text(rng, 20)}?"
                questions[name].append({"image_id": cid, "question": q, "question_id": i})
                records.append(
                    {
                        "id": f"{cid:012d}",
                        "image": coco,
                        "conversations": turns(rng, f"{q}\n{SHORT_ANSWER}", size, 1),
                    }
                )
                continue
            first, image = {
                "llava_instruct": (f"Describe scene {i}.", coco),
                "a_okvqa": (f"Which one?\nA. x\nB. y\n{OPTION_LETTER}", coco),
                "refcoco": (REGION, coco),
                "gqa": (f"Is it left?\n{SHORT_ANSWER}", f"gqa/images/{i}.jpg"),
                "ocr_vqa": (f"Who wrote it?\n{SHORT_ANSWER}", f"ocr_vqa/images/{i}.jpg"),
                "textcaps": (TEXTCAPS_PROMPT, f"textvqa/train_images/{i}.jpg"),
                "vg": (REGION, f"vg/VG_100K/{i}.jpg"),
            }[name]
            conv = turns(rng, first, size, 3 if name in ("llava_instruct", "vg", "refcoco") else 2)
            records.append({"id": f"{i}", "image": image, "conversations": conv})
            if name == "llava_instruct":
                llava_ref.append({"id": f"{cid:012d}", "image": Path(image).name, "conversations": conv})
    rng.shuffle(records)
    paths = {"mix": data / "llava_v1_5_mix665k.json", "llava_ref": data / "llava_instruct_150k.json"}
    paths["mix"].write_text(json.dumps(records, ensure_ascii=False))
    paths["llava_ref"].write_text(json.dumps(llava_ref))
    for name, file in (
        ("vqav2", "v2_OpenEnded_mscoco_train2014_questions.json"),
        ("okvqa", "OpenEnded_mscoco_train2014_questions.json"),
    ):
        (data / name / file).write_text(json.dumps({"questions": questions[name]}))
    gen = work / "datagen"
    gen.mkdir()

    def generated(kind: str, n: int):
        for _ in range(n):
            cid = rng.choice(coco_ids)
            yield {
                "id": f"{cid:012d}",
                "image": f"coco/train2017/{cid:012d}.jpg",
                "conversations": turns(rng, "What is happening here?", 1500, 2),
                "source": "firellava_generated",
                "license": "llama2",
                "model": "codellama/CodeLlama-34b-Instruct-hf",
                "type": kind,
            }

    for kind, count in GENERATED.items():
        write_jsonl(gen / f"{kind}.jsonl", generated(kind, round(count * scale)))
    return paths


def accept_all(folder, images, *, mode, workers):
    return {rel: ("ok", "") for rel in set(images)}


@dataclasses.dataclass(frozen=True)
class SyntheticBenchmarks:
    """POPE-sized and VQAv2-test-dev-sized image lists, named as those benchmarks name their files."""

    seed: int = 1

    def images(self):
        from firellava.core.decontam import EvalImage, EvalImages

        coco_ids = random.Random(0).sample(range(1, 600_000), 120_000)  # the ids `build` draws from
        pope = [
            EvalImage("pope", f"COCO_val2014_{i:012d}.jpg", path=Path(f"val2014/COCO_val2014_{i:012d}.jpg"))
            for i in random.Random(self.seed).sample(coco_ids, 500)
        ]
        vqav2 = [
            EvalImage(
                "vqav2", f"COCO_test2015_{i:012d}.jpg", path=Path(f"test2015/COCO_test2015_{i:012d}.jpg")
            )
            for i in range(600_001, 600_001 + 36_807)
        ]
        return EvalImages({"pope": pope, "vqav2": vqav2})


def measure_mix(work: Path, scale: float, near_duplicates: bool = True) -> dict:
    import logging

    from hydra import compose, initialize_config_dir

    from firellava.config import build
    from firellava.mix.stage import MixInputs, build_mix

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    target = round(588_000 * scale)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "experiment=firellava_13b",
                f"paths.data_root={work / 'data'}",
                f"mix.target_total={target}",
                f"mix.near_duplicates.enabled={str(near_duplicates).lower()}",
                "mix.overwrite=true",
            ],
        )
    spec = build(cfg.mix)
    spec = dataclasses.replace(
        spec,
        decontamination=dataclasses.replace(
            spec.decontamination, benchmarks=SyntheticBenchmarks(), perceptual_hash=False
        ),
    )
    inputs = MixInputs(
        work / "data" / "llava_v1_5_mix665k.json", work / "data", work / "datagen", work / "mix"
    )
    start, cpu = time.perf_counter(), time.process_time()
    summary = build_mix(spec, inputs, image_checker=accept_all)
    manifest = json.loads(Path(summary["manifest"]).read_text())
    decontamination = manifest["decontamination"]
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "total": summary["total"],
        "by_source": summary["by_source"],
        "decontamination_seconds": decontamination["seconds"],
        "decontamination_records": decontamination["records_touching_benchmarks"],
        "near_duplicates": manifest["near_duplicates"],
    }


def measure_json_load(work: Path) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    with (work / "data" / "llava_v1_5_mix665k.json").open(encoding="utf-8") as f:
        n = len(json.load(f))
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "records": n}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: Linux carries that across exec, so a
    child would report the parent's peak (the one that built the synthetic data)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(kind: str, work: Path, scale: float) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", kind, "--workdir", str(work), "--scale", str(scale)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--measure", choices=("mix", "mix_no_dedup", "json_load"), default=None)
    args = ap.parse_args()
    if args.measure:
        if args.measure == "json_load":
            out = measure_json_load(args.workdir)
        else:
            out = measure_mix(args.workdir, args.scale, near_duplicates=args.measure == "mix")
        out["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(out))
        return
    work = Path(tempfile.mkdtemp(prefix="mix_scale.", dir=args.workdir))
    try:
        start = time.perf_counter()
        paths = build(work, args.scale)
        size = paths["mix"].stat().st_size
        print(
            f"synthetic input: {size / 1e9:.2f} GB, built in {time.perf_counter() - start:.0f}s (scale {args.scale})"
        )
        mix = child("mix", work, args.scale)
        plain = child("mix_no_dedup", work, args.scale)
        load = child("json_load", work, args.scale)
        print(
            f"mix stage (classify+validate+quota+shuffle+write, no image decode): {mix['seconds']:.1f}s wall, "
            f"{mix['cpu_seconds']:.1f}s CPU, "
            f"peak RSS {mix['peak_rss_mb']:.0f} MB, {mix['total']:,} records out"
        )
        print(f"  by source: {mix['by_source']}")
        nd = mix["near_duplicates"]
        print(
            f"  near-duplicate check: {nd['seconds']:.1f}s wall inside the stage; {nd['generated_checked']:,} "
            f"generated vs {nd['permissive_checked']:,} other records on {nd['shared_images']:,} shared images, "
            f"{nd['removed']:,} removed"
        )
        print(
            f"same stage without the near-duplicate check: {plain['seconds']:.1f}s wall, "
            f"{plain['cpu_seconds']:.1f}s CPU, peak RSS {plain['peak_rss_mb']:.0f} MB; with/without: CPU time "
            f"{mix['cpu_seconds'] / plain['cpu_seconds']:.2f}x, memory {mix['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x"
        )
        print(
            f"  of which decontamination by COCO id: {mix['decontamination_seconds']} "
            f"({mix['decontamination_records']:,} records on POPE/VQAv2-sized benchmark images removed)"
        )
        print(
            f"plain json.load of the input alone: {load['seconds']:.1f}s wall, {load['cpu_seconds']:.1f}s CPU, "
            f"peak RSS {load['peak_rss_mb']:.0f} MB"
        )
        print(
            f"ratio mix/json.load: CPU time {mix['cpu_seconds'] / load['cpu_seconds']:.2f}x, "
            f"memory {mix['peak_rss_mb'] / load['peak_rss_mb']:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
