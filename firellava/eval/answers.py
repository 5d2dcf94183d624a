"""Answers: generated greedily and in batches through the engine interface, cached per benchmark and model.

The cache is LLaVA's answer jsonl (`question_id, prompt, text, answer_id, model_id, metadata`), appended batch by
batch, so an interrupted run loses at most one batch and a rerun only generates what is missing. Every line names
the model that wrote it; a file from another model is refused rather than mixed in.

The judge's reviews are cached beside the answers (`reviews/<benchmark>.jsonl`), keyed by a hash of the
judge model, its token budget and the exact judge prompt: a rerun asks the judge only for reviews it lacks,
and a changed judge or prompt gets new reviews instead of stale ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections import defaultdict, deque
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from firellava.core.io import append_jsonl, iter_jsonl, write_jsonl
from firellava.core.progress import Progress
from firellava.engines import Engine, Prompt, SamplingParams
from firellava.eval.benchmarks.base import Benchmark, BenchmarkDataError, Question

log = logging.getLogger(__name__)
_FULL_HASH_LIMIT = 2 << 30  # weights under 2 GiB are hashed whole; larger ones by size and first/last MiB


class ForeignAnswersError(ValueError):
    """An answer file written by a different model than the one being evaluated."""


def model_fingerprint(checkpoint: str | Path) -> str:
    """A short id of a checkpoint's config and weights: a retrained model at the same path gets a new one."""
    root = Path(checkpoint)
    if not root.is_dir():
        raise FileNotFoundError(
            f"checkpoint {root} is not a directory (eval.checkpoint / paths.finetune_dir)"
        )
    files = sorted(p for p in root.iterdir() if p.suffix in (".json", ".safetensors", ".bin") and p.is_file())
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise FileNotFoundError(f"checkpoint {root} holds no weights (*.safetensors / *.bin)")
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{p.stat().st_size}\n".encode())
        with p.open("rb") as f:
            if total <= _FULL_HASH_LIMIT or p.suffix == ".json":
                while block := f.read(1 << 20):
                    h.update(block)
            else:
                h.update(f.read(1 << 20))
                f.seek(max(0, p.stat().st_size - (1 << 20)))
                h.update(f.read())
    return h.hexdigest()[:16]


def _ends_mid_line(path: Path) -> bool:
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


class JsonlCache:
    """Records in a jsonl file, one per `key_field`; the last line per key wins. A torn last line (a run
    killed mid-write) is dropped and the file rewritten without it, so that what is appended next starts a
    line."""

    key_field: ClassVar[str]
    required: ClassVar[tuple[str, ...]]

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._read()

    def check(self, record: dict[str, Any], where: str) -> None:
        """Refuse a record that does not belong in this cache (the message starts with `where`)."""

    def _read(self) -> None:
        for lineno, rec, _ in iter_jsonl(self.path, drop_torn_tail=True):
            if not isinstance(rec, dict):
                raise ValueError(f"{self.path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            for key in self.required:
                if key not in rec:
                    raise ValueError(f"{self.path}:{lineno}: missing field {key!r}")
            self.check(rec, f"{self.path}:{lineno}")
            self.records[str(rec[self.key_field])] = rec
        if _ends_mid_line(self.path):
            write_jsonl(self.path, self.records.values())


class AnswerCache(JsonlCache):
    """One benchmark's answers by one model: `<dir>/<benchmark>.jsonl`."""

    key_field = "question_id"
    required = ("question_id", "text", "model_id")

    def __init__(self, path: str | Path, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(path)

    def check(self, record: dict[str, Any], where: str) -> None:
        if record["model_id"] != self.model_id:
            raise ForeignAnswersError(
                f"{where}: answer to question {record['question_id']!r} was written by model "
                f"{record['model_id']!r}, but this run evaluates {self.model_id!r}; point eval.output at "
                "another directory or delete the file"
            )

    def fresh(self, question: Question, max_new_tokens: int) -> bool:
        """Answered for exactly this prompt and token budget (an edited prompt is asked again)."""
        rec = self.records.get(question.qid)
        return (
            rec is not None
            and rec.get("prompt") == question.text
            and rec.get("metadata", {}).get("max_new_tokens") == max_new_tokens
        )

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        append_jsonl(self.path, records)
        for r in records:
            self.records[str(r["question_id"])] = r

    def answers(self) -> dict[str, str]:
        return {qid: rec["text"] for qid, rec in self.records.items()}


class ReviewCache(JsonlCache):
    """One benchmark's judge reviews: `{key, judge, review, finish_reason}` per line (`key`: `review_key` in
    eval/judge.py). Reviews by any number of judges share the file, told apart by the key. Each batch rewrites
    the file under a temporary name, so the file on disk is always complete."""

    key_field = "key"
    required = ("key", "judge", "review")

    def put(self, records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            self.records[str(r["key"])] = r
        write_jsonl(self.path, self.records.values())


def to_prompt(question: Question) -> Prompt:
    """The user turn as chat messages; the checkpoint's own template adds the system prompt and `<image>\\n`."""
    image = question.load_image()
    if image is None:
        return Prompt(messages=[{"role": "user", "content": question.text}])
    content = [{"type": "image"}, {"type": "text", "text": question.text}]
    return Prompt(messages=[{"role": "user", "content": content}], images=[image])


def generate_missing(
    engine: Engine,
    benchmark: str,
    questions: Sequence[Question],
    cache: AnswerCache,
    *,
    batch_size: int,
    params: SamplingParams,
) -> int:
    """Answer the questions the cache lacks, batch by batch (`params.max_tokens` is the benchmark's budget);
    returns how many were generated."""
    max_new_tokens = params.max_tokens
    todo = [q for q in questions if not cache.fresh(q, max_new_tokens)]
    if not todo:
        log.info("%s: all %d answers cached in %s", benchmark, len(questions), cache.path)
        return 0
    log.info(
        "%s: generating %d of %d answers (%d cached)",
        benchmark,
        len(todo),
        len(questions),
        len(questions) - len(todo),
    )
    progress = Progress(f"{benchmark} answers", len(todo), unit="questions", logger=log)
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        generations = engine.generate([to_prompt(q) for q in batch], params)
        cache.append(
            [
                {
                    "question_id": q.qid,
                    "prompt": q.text,
                    "text": g.text.strip(),
                    "answer_id": uuid.uuid4().hex,
                    "model_id": cache.model_id,
                    "metadata": {
                        "benchmark": benchmark,
                        "max_new_tokens": max_new_tokens,
                        "finish_reason": g.finish_reason,
                        "completion_tokens": g.completion_tokens,
                    },
                }
                for q, g in zip(batch, generations)
            ]
        )
        progress.update(len(batch))
    progress.close()
    return len(todo)


def read_answer_file(
    bench: Benchmark, questions: Sequence[Question], path: str | Path
) -> tuple[dict[str, str], int]:
    """Answers someone else generated, in LLaVA's answer jsonl (`question_id`, `prompt`, `text`, ...): each
    record goes to the question with the same key (`Benchmark.record_key` / `match_key`), records sharing a key
    to its questions in file order. Returns the answers by question id and how many records matched no
    loaded question (a file of the whole benchmark scored with eval.limit, or stray lines)."""
    path = Path(path)
    waiting: dict[Hashable, deque[str]] = defaultdict(deque)
    for q in questions:
        waiting[bench.match_key(q)].append(q.qid)
    answers, unmatched = {}, 0
    try:
        for lineno, rec, _ in iter_jsonl(path):
            where = f"{path}:{lineno}"
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise BenchmarkDataError(f"{where}: expected an answer record with a string field 'text'")
            queue = waiting.get(bench.record_key(rec, where))
            if queue:
                answers[queue.popleft()] = rec["text"]
            else:
                unmatched += 1
    except ValueError as e:
        raise BenchmarkDataError(str(e)) from None
    return answers, unmatched
