"""The mix stage: the commercially permissive part of LLaVA-1.5's 665K mix plus the generated conversations, as
one LLaVA JSON list with a manifest that proves what went in (licenses, counts, hashes) and a data card.

Flow: classify every input record (the stage fails listing any record no rule recognizes), drop the
non-commercial sources unless explicitly allowed, read the generated JSONL, validate every remaining record and
its image, apply quotas and the target total, shuffle with the seed, write everything into a staging directory
that is renamed onto `<mix_dir>` only when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from firellava.config import build, to_node
from firellava.core.decontam import DecontamSpec
from firellava.core.io import atomic_path, iter_jsonl, staged_dir, write_json
from firellava.core.neardup import NearDupSpec
from firellava.core.progress import Progress
from firellava.core.records import record_problem
from firellava.core.terms import TrainingTerms
from firellava.core.tracking import active_run
from firellava.mix.card import render_datacard
from firellava.mix.decontam import EVAL_OVERLAP, decontaminate
from firellava.mix.dedup import drop_generated_near_duplicates
from firellava.mix.generated_checks import read_generated_checks
from firellava.mix.io import JsonListReader
from firellava.mix.plan import draw, plan_counts, shuffle
from firellava.mix.sources import Classifier, SourceSpec
from firellava.mix.terms import training_terms
from firellava.mix.validate import MISSING, OK, UNDECODABLE, check_images, images_digest

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "firellava-mix-manifest/1"
WRITE_BLOCK_CHARS = 1 << 22
LIST_LIMIT = 1000  # records named in one error message; the count is always given
EXCLUSION_REASONS = (
    "noncommercial",
    "invalid",
    MISSING,
    UNDECODABLE,
    EVAL_OVERLAP,
    "near_duplicate",
    "quota",
)


class ImageChecker(Protocol):
    def __call__(
        self, folder: Path, images: Iterable[str], *, mode: str, workers: int | None
    ) -> dict[str, tuple[str, str]]: ...


@dataclass(frozen=True)
class GeneratedSource:
    """The datagen stage's output: its own source, under the teacher model's license."""

    name: str
    license: str
    commercial_use: bool
    files: Sequence[str] = ()
    url: str = ""
    note: str = ""
    terms: TrainingTerms | None = None  # the teacher licence's term on what its outputs may train

    def __post_init__(self) -> None:
        missing = [k for k in ("name", "license", "commercial_use") if getattr(self, k) in (None, "")]
        if missing:
            raise ValueError(f"mix.generated: {missing} required")


@dataclass(frozen=True)
class MixSpec:
    """The `mix` config group, as typed arguments (see conf/mix/)."""

    sources: dict[str, SourceSpec]
    generated: GeneratedSource
    reference_files: dict[str, str] = field(default_factory=dict)
    target_total: int | None = 588_000
    fill_source: str | None = "firellava_generated"
    quotas: dict[str, int | float] = field(default_factory=dict)
    allow_noncommercial: bool = False
    drop_missing_images: bool = False
    drop_invalid: bool = False
    image_check: str = "decode"
    image_workers: int | None = None
    # Generated records against other sources' records of the same image (mix/dedup.py).
    near_duplicates: NearDupSpec = field(default_factory=NearDupSpec)
    seed: int = 42
    overwrite: bool = False
    output_name: str = "firellava_mix.json"
    decontamination: DecontamSpec = field(default_factory=DecontamSpec)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("mix.sources is empty: the registry must name every source of the input mix")
        for key, source in self.sources.items():
            if source.name != key:
                raise ValueError(f"mix.sources.{key}.name is {source.name!r}; a source's name is its key")


@dataclass(frozen=True)
class MixInputs:
    mix665k_json: Path
    image_folder: Path
    datagen_dir: Path
    out_dir: Path


class _Item(NamedTuple):
    """A candidate record kept as its JSON text, a fraction of what the parsed objects would take in memory
    (`perf/mix_scale.py` prints the stage's peak). `where` locates it in its input file."""

    where: str
    id: Any
    image: str | None
    text: str
    labelled: bool  # the text already carries the right `source` and `license` (generated records)


@dataclass
class _Pool:
    """The valid candidate records per source, and the counts of everything that was left out."""

    items: dict[str, list[_Item]] = field(default_factory=lambda: defaultdict(list))
    seen: Counter = field(default_factory=Counter)
    excluded: dict[str, Counter] = field(default_factory=lambda: {r: Counter() for r in EXCLUSION_REASONS})
    dropped: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    invalid: list[str] = field(default_factory=list)

    def add(self, name: str, where: str, record: Any, text: str, labelled: bool = False) -> None:
        """Validate the record's schema now, while it is parsed; keep only its text."""
        problem = record_problem(record)
        rid = record.get("id") if isinstance(record, dict) else None
        if problem is None:
            self.items[name].append(_Item(where, rid, record.get("image"), text, labelled))
            return
        self.invalid.append(f"{name} {where} (id {rid!r}): {problem}")
        self.excluded["invalid"][name] += 1
        self.dropped["invalid"].append({"source": name, "where": where, "id": rid, "problem": str(problem)})


def _listing(problems: list[str], what: str) -> str:
    shown = "\n  ".join(problems[:LIST_LIMIT])
    more = f"\n  ... and {len(problems) - LIST_LIMIT} more" if len(problems) > LIST_LIMIT else ""
    return f"{len(problems)} {what}:\n  {shown}{more}"


def _check_sources(spec: MixSpec, registry: list[SourceSpec], generated: GeneratedSource) -> None:
    names = [s.name for s in registry]
    if generated.name in names:
        raise ValueError(
            f"mix.generated.name={generated.name!r} is also a registry source; names must be unique"
        )
    if spec.fill_source is not None and spec.fill_source not in [*names, generated.name]:
        raise ValueError(
            f"mix.fill_source={spec.fill_source!r} is not a source; sources: {[*names, generated.name]}"
        )
    refused = [s for s in [*registry, generated] if not s.commercial_use and not spec.allow_noncommercial]
    asked = [s.name for s in refused if spec.quotas.get(s.name)]
    if asked:
        licenses = "; ".join(f"{s.name}: {s.license}" for s in refused if s.name in asked)
        raise ValueError(
            f"mix.quotas asks for non-commercial source(s) {asked} ({licenses}); they are refused unless "
            "mix.allow_noncommercial=true, and a mix that includes them may not be used commercially"
        )


def _read_mix(
    path: Path, classifier: Classifier, permitted: dict[str, SourceSpec], pool: _Pool
) -> JsonListReader:
    reader = JsonListReader(path)
    start = time.perf_counter()
    n = 0
    progress = Progress("mix665k read", None, unit="records", logger=log)
    for index, record, text in reader.with_text():
        n += 1
        progress.update()
        name = classifier.classify(index, record)
        if name is None:
            continue
        pool.seen[name] += 1
        if name in permitted:
            pool.add(name, f"record {index}", record, text)
        else:
            pool.excluded["noncommercial"][name] += 1
    log.info("mix665k: %d records classified in %.1fs: %s", n, time.perf_counter() - start, dict(pool.seen))
    unclassified = classifier.result.unclassified
    if unclassified:
        problems = [f"record {i} (id {rid!r}): {why}" for i, rid, why in unclassified]
        raise ValueError(
            f"{path}: {_listing(problems, 'record(s) match no source of the registry (mix.sources)')}\n"
            "Every record must get exactly one source: add or fix a rule in conf/mix/sources/."
        )
    return reader


def _generated_files(datagen_dir: Path, name: str) -> list[Path]:
    """The datagen stage's file, or the same file from every shard of a multi-node run (`shard-i-of-n/`), which
    must all be there: a mix of some shards would silently be smaller than planned."""
    single = datagen_dir / name
    if single.is_file():
        return [single]
    shards = sorted(d for d in datagen_dir.glob("shard-*-of-*") if d.is_dir())
    if not shards:
        raise FileNotFoundError(
            f"{single}: generated records not found; run the datagen stage first "
            "(or set mix.generated.files=[] to mix without generated data)"
        )
    counts = {d.name.rsplit("-of-", 1)[1] for d in shards}
    if len(counts) != 1 or len(shards) != int(counts.pop()):
        raise ValueError(
            f"{datagen_dir}: shard directories {[d.name for d in shards]} are not one complete set; "
            "finish the missing shards of the datagen stage first"
        )
    missing = [str(d / name) for d in shards if not (d / name).is_file()]
    if missing:
        raise FileNotFoundError(f"generated records not found in unfinished shard(s): {missing}")
    return [d / name for d in shards]


def _read_generated(gen: GeneratedSource, datagen_dir: Path, pool: _Pool) -> list[dict[str, Any]]:
    inputs = []
    for name, path in ((n, p) for n in gen.files for p in _generated_files(datagen_dir, n)):
        h = hashlib.sha256()
        count = 0
        for line, record, text in iter_jsonl(path, h):
            rid = record.get("id") if isinstance(record, dict) else None
            for key, expected in (("source", gen.name), ("license", gen.license)):
                got = record.get(key) if isinstance(record, dict) else None
                if got != expected:
                    raise ValueError(
                        f"{path}: line {line} (id {rid!r}): field {key!r} is {got!r}, expected {expected!r} "
                        "(the provenance of generated records must match mix.generated)"
                    )
            pool.add(gen.name, f"{path.relative_to(datagen_dir)} line {line}", record, text, labelled=True)
            count += 1
        pool.seen[gen.name] += count
        inputs.append(
            {"role": f"generated:{name}", "path": str(path), "sha256": h.hexdigest(), "records": count}
        )
    return inputs


def _validate_images(
    pool: _Pool, spec: MixSpec, inputs: MixInputs, image_checker: ImageChecker
) -> dict[str, Any]:
    """Fail on (or drop) invalid records and records whose image is missing or does not decode."""
    if pool.invalid and not spec.drop_invalid:
        raise ValueError(
            f"{_listing(pool.invalid, 'invalid record(s)')}\n"
            "Fix the input, or set mix.drop_invalid=true to leave them out."
        )
    images = [item.image for items in pool.items.values() for item in items if item.image is not None]
    status = image_checker(inputs.image_folder, images, mode=spec.image_check, workers=spec.image_workers)
    bad: dict[str, list[str]] = {MISSING: [], UNDECODABLE: []}
    for name, items in pool.items.items():
        kept = []
        for item in items:
            state = status[item.image][0] if item.image is not None else OK
            if state == OK:
                kept.append(item)
                continue
            bad[state].append(f"{name} {item.where} (id {item.id!r}): {inputs.image_folder / item.image}")
            pool.excluded[state][name] += 1
            pool.dropped[state].append(
                {"source": name, "where": item.where, "id": item.id, "image": item.image}
            )
        items[:] = kept
    if (bad[MISSING] or bad[UNDECODABLE]) and not spec.drop_missing_images:
        raise ValueError(
            f"{_listing(bad[MISSING], 'record(s) with a missing image')}\n"
            f"{_listing(bad[UNDECODABLE], 'record(s) with an image that does not decode')}\n"
            "Fetch the images, or set mix.drop_missing_images=true to leave these records out (the manifest "
            "counts them)."
        )
    return {
        "folder": str(inputs.image_folder),
        "check": spec.image_check,
        "distinct_images": len(status),
        MISSING: sorted(rel for rel, (s, _) in status.items() if s == MISSING),
        UNDECODABLE: sorted(rel for rel, (s, _) in status.items() if s == UNDECODABLE),
        "digest": images_digest(status),
        "digest_of": "sha256 over sorted lines '<relative path>\\t<sha256 of the file>' (empty hash when not read)",
    }


def _drop_near_duplicates(pool: _Pool, generated: str, spec: NearDupSpec) -> dict[str, Any]:
    if not spec.enabled:
        return {"enabled": False}
    dropped, figures = drop_generated_near_duplicates(pool.items, generated, spec)
    if dropped:
        pool.excluded["near_duplicate"][generated] += len(dropped)
        pool.dropped["near_duplicate"] += dropped
    log.info("mix: %d generated records near-duplicate a record of the same image", len(dropped))
    return {"enabled": True, **figures}


def _write_mix(path: Path, records: list[tuple[str, _Item]], licenses: dict[str, str]) -> tuple[str, int]:
    """Stream the JSON list to a temporary file, hashing it on the way; rename when complete.

    Each record's own JSON text is copied with `source` and `license` appended before its closing brace, so
    nothing is re-encoded; a record that already has either key is re-encoded with them replaced. Blocks are
    hashed and written by a second thread (both release the GIL) while the next block is assembled.
    """
    tails = {
        name: f', "source": {json.dumps(name)}, "license": {json.dumps(lic, ensure_ascii=False)}}}'
        for name, lic in licenses.items()
    }
    h = hashlib.sha256()
    size = 0
    with atomic_path(path) as tmp, tmp.open("wb") as f, ThreadPoolExecutor(max_workers=1) as writer:
        pending: Future | None = None

        def flush(parts: list[str]) -> None:
            nonlocal pending, size
            block = "".join(parts).encode()
            size += len(block)
            if pending is not None:
                pending.result()
            pending = writer.submit(lambda b: (h.update(b), f.write(b)), block)

        parts: list[str] = ["["]
        chars = 0
        for i, (name, item) in enumerate(records):
            text = item.text
            if item.labelled:
                pass
            elif '"source"' in text or '"license"' in text:
                record = json.loads(text)
                if "source" in record or "license" in record:
                    record.update(source=name, license=licenses[name])
                    text = json.dumps(record, ensure_ascii=False)
                else:
                    text = text[:-1] + tails[name]
            else:
                text = text[:-1] + tails[name]
            parts.append("\n" if i == 0 else ",\n")
            parts.append(text)
            chars += len(text)
            if chars > WRITE_BLOCK_CHARS:
                flush(parts)
                parts, chars = [], 0
        parts.append("\n]\n" if records else "]\n")
        flush(parts)
        pending.result()
    return h.hexdigest(), size


def _noncommercial_statement(included: list[SourceSpec | GeneratedSource], allowed: bool) -> str:
    if included:
        listed = "; ".join(f"{s.name} ({s.license})" for s in included)
        return (
            f"NOT FOR COMMERCIAL USE. This mix includes records from non-commercial sources: {listed}. "
            "They were included only because mix.allow_noncommercial=true was set."
        )
    if allowed:
        return (
            "mix.allow_noncommercial=true was set, but no record from a non-commercial source was selected: "
            "every record comes from a source whose license allows commercial use."
        )
    return (
        "Every record comes from a source whose license allows commercial use; non-commercial sources were "
        "refused (mix.allow_noncommercial=false)."
    )


def build_mix(
    spec: MixSpec, inputs: MixInputs, *, image_checker: ImageChecker = check_images
) -> dict[str, Any]:
    """Run the whole stage; `image_checker` is replaceable so a benchmark can time the rest without images."""
    start = time.perf_counter()
    registry = list(spec.sources.values())
    generated = spec.generated
    _check_sources(spec, registry, generated)
    every = {s.name: s for s in [*registry, generated]}
    permitted = {n: s for n, s in every.items() if s.commercial_use or spec.allow_noncommercial}
    # Absolute in the summary: the notebooks read it from their own working directory.
    out_dir = Path(inputs.out_dir).resolve()
    with staged_dir(out_dir, overwrite=spec.overwrite, hint=" (mix.overwrite=true)") as tmp:
        pool = _Pool()
        classifier = Classifier(registry)
        reader = _read_mix(Path(inputs.mix665k_json), classifier, permitted, pool)
        input_files = [
            {
                "role": "mix665k",
                "path": str(inputs.mix665k_json),
                "sha256": reader.sha256,
                "bytes": reader.bytes,
                "records": sum(classifier.result.counts.values()),
            }
        ]
        input_files += [
            {"role": "reference", "path": str(r.path), "sha256": r.sha256, "records": r.entries}
            for r in classifier.references
        ]
        generated_checks = None
        if generated.name in permitted:
            generated_inputs = _read_generated(generated, Path(inputs.datagen_dir), pool)
            input_files += generated_inputs
            generated_checks = read_generated_checks(
                sorted({Path(f["path"]).parent for f in generated_inputs})
            )
        images = _validate_images(pool, spec, inputs, image_checker)
        decontamination = decontaminate(spec.decontamination, pool.items, Path(inputs.image_folder))
        for name, items in decontamination.removed.items():
            pool.excluded[EVAL_OVERLAP][name] += len(items)
            pool.dropped[EVAL_OVERLAP] += [
                {"source": name, "where": i.where, "id": i.id, "image": i.image} for i in items
            ]
        near_duplicates = _drop_near_duplicates(pool, generated.name, spec.near_duplicates)

        available = {name: len(pool.items.get(name, ())) for name in permitted}
        take = plan_counts(available, spec.quotas, spec.target_total, spec.fill_source)
        selected: list[tuple[str, _Item]] = []
        for name, k in take.items():
            chosen = draw(pool.items.get(name, []), k, spec.seed, name)
            if available[name] > k:
                pool.excluded["quota"][name] += available[name] - k
            selected += [(name, item) for item in chosen]
        pool.items.clear()
        shuffle(selected, spec.seed)
        by_source = {name: k for name, k in take.items() if k}

        mix_path = tmp / spec.output_name
        licenses = {n: s.license for n, s in every.items()}
        sha, size = _write_mix(mix_path, selected, licenses)
        log.info("mix: %d records written (%.1f MB)", len(selected), size / 1e6)
        excluded = {reason: dict(c) for reason, c in pool.excluded.items()}
        included_nc = [every[n] for n in by_source if not every[n].commercial_use]
        manifest = {
            "format": MANIFEST_FORMAT,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "output": {"path": spec.output_name, "sha256": sha, "bytes": size, "records": len(selected)},
            "total": len(selected),
            "target_total": spec.target_total,
            "seed": spec.seed,
            "by_source": by_source,
            "excluded": excluded,
            "commercial_use": {
                "allow_noncommercial": spec.allow_noncommercial,
                "commercially_usable": not included_nc,
                "noncommercial_sources_included": [s.name for s in included_nc],
                "statement": _noncommercial_statement(included_nc, spec.allow_noncommercial),
            },
            "sources": {
                name: {
                    "license": s.license,
                    "commercial_use": s.commercial_use,
                    "url": s.url,
                    "note": s.note,
                    "terms": s.terms.as_dict() if s.terms else None,
                    "in_input": pool.seen.get(name, 0),
                    "selected": take.get(name, 0),
                    "excluded": {r: excluded[r][name] for r in EXCLUSION_REASONS if excluded[r].get(name)},
                }
                for name, s in every.items()
            },
            "classification": {
                "records": sum(classifier.result.counts.values()),
                "counts": {s.name: classifier.result.counts.get(s.name, 0) for s in registry},
                "ambiguous": dict(classifier.result.ambiguous),
                "rule": "every registry rule is evaluated; the first in registry order wins",
            },
            "inputs": input_files,
            "images": images,
            "decontamination": decontamination.report,
            "training_terms": training_terms(every, by_source),
            "near_duplicates": near_duplicates,
            "generated_checks": generated_checks,
            "dropped_records": dict(pool.dropped),
            "config": to_node(spec),
        }
        write_json(tmp / "manifest.json", manifest)
        with atomic_path(tmp / "DATACARD.md") as card:
            card.write_text(render_datacard(manifest), encoding="utf-8")
    summary = {
        "dir": str(out_dir),
        "total": len(selected),
        "by_source": by_source,
        "excluded": {reason: sum(c.values()) for reason, c in excluded.items()},
        "mix_json": str(out_dir / spec.output_name),
        "manifest": str(out_dir / "manifest.json"),
        "commercially_usable": not included_nc,
        "decontamination": {
            "action": decontamination.report["action"],
            "records_touching_benchmarks": decontamination.report["records_touching_benchmarks"],
            "per_benchmark": {
                b: e["training_records"] for b, e in decontamination.report["benchmarks"].items()
            },
        },
        "near_duplicates_removed": near_duplicates["removed"] if near_duplicates["enabled"] else None,
        "generated_grounding": (
            {k: generated_checks["overall"][k] for k in ("chair_i", "chair_s", "count_mismatches")}
            | {"rejected": generated_checks["rejected"]}
            if generated_checks
            else None
        ),
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("mix done: %s", json.dumps(summary))
    run = active_run()
    if run is not None:
        _log_wandb(run, summary["by_source"], summary["excluded"])
    return summary


def _log_wandb(run: Any, by_source: dict[str, int], excluded: dict[str, int]) -> None:
    import wandb

    table = wandb.Table(columns=["source", "records"], data=[[k, v] for k, v in by_source.items()])
    run.log({"mix/by_source": table, **{f"mix/excluded/{k}": v for k, v in excluded.items()}})


def run(cfg) -> dict[str, Any]:
    paths = build(cfg.paths)
    inputs = MixInputs(
        mix665k_json=Path(paths.mix665k_json),
        image_folder=Path(paths.image_folder),
        datagen_dir=Path(paths.datagen_dir),
        out_dir=Path(paths.mix_dir),
    )
    return build_mix(build(cfg.mix), inputs)
