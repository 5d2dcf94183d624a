"""What every benchmark is: a loader for its own files, its prompt (LLaVA-1.5's suffixes, from
`core.instructions`), its scorer, and (for server-scored splits) the submission file the server takes."""

from __future__ import annotations

import base64
import io
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from firellava.core.io import iter_jsonl, read_json

OPTION_LETTER_CN = "请直接回答选项字母。"
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


class BenchmarkDataError(ValueError):
    """A benchmark file that cannot be read as its format says; the message names the file, record and field."""


class MissingAnswerError(KeyError):
    """A question without an answer at scoring time."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


@dataclass(frozen=True)
class Question:
    qid: str  # unique within the benchmark
    text: str  # the full user turn after the image: question + LLaVA-1.5's response-format suffix
    image: Path | bytes | None  # a file, encoded image bytes (MMBench's base64 cells), or none (text-only)
    meta: Mapping[str, Any] = field(default_factory=dict)  # what the scorer needs: ground truth, category...

    def load_image(self) -> Image.Image | None:
        if self.image is None:
            return None
        if isinstance(self.image, bytes):
            return Image.open(io.BytesIO(self.image)).convert("RGB")
        if not Path(self.image).exists():
            raise FileNotFoundError(f"question {self.qid}: image {self.image} not found")
        return Image.open(self.image).convert("RGB")


class Benchmark:
    """One benchmark at one split. Subclasses set the class attributes and implement `load` and `score`."""

    name: ClassVar[str]
    title: ClassVar[str]  # column label in the report
    metric: ClassVar[str]  # what the headline score is
    published: ClassVar[float | None]  # LLaVA-1.5-13B, paper Table 4
    scale: ClassVar[float] = 100.0  # the headline score's maximum
    dirname: ClassVar[str]  # folder under the eval data root (LLaVA's playground/data/eval layout)
    splits: ClassVar[tuple[str, ...]]
    # split -> where LLaVA's scripts leave a model's answers, under the eval data root (`{model}`: its name)
    llava_answers: ClassVar[dict[str, str]] = {}
    server_splits: ClassVar[tuple[str, ...]] = ()  # splits whose ground truth only the server has
    max_new_tokens: ClassVar[int] = 128  # LLaVA: model_vqa_loader 128; model_vqa/_mmbench/_science 1024
    judged: ClassVar[bool] = False
    judge_fallback: ClassVar[bool] = False  # asks a configured judge only where its rules fail

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root) / self.dirname
        self.split = split or self.splits[0]
        if self.split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {self.split!r}; known: {list(self.splits)}")

    @property
    def offline(self) -> bool:
        return self.split not in self.server_splits

    def load(self) -> list[Question]:
        raise NotImplementedError

    def score(self, questions: Sequence[Question], answers: Mapping[str, str], judge=None) -> dict[str, Any]:
        """Metrics with the headline under "score" (the paper's scale); a server split returns score None."""
        raise NotImplementedError

    def submission(
        self, questions: Sequence[Question], answers: Mapping[str, str], out_dir: Path
    ) -> Path | None:
        """The file the benchmark's server takes; None where the benchmark is scored here."""
        return None

    def record_key(self, record: Mapping[str, Any], where: str) -> Hashable:
        """What names the question an answer record (LLaVA's answer jsonl line) answers; `match_key` gives the
        same value for that question. Records and questions with equal keys pair in file order."""
        return str(field_of(record, "question_id", where))

    def match_key(self, question: Question) -> Hashable:
        return question.qid

    def file(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        if not path.exists():
            raise FileNotFoundError(f"{self.name}: {path} not found (is eval.data_root right?)")
        return path


# --- shared readers and checks --------------------------------------------------------------------------------


def read_json_file(path: Path) -> Any:
    try:
        return read_json(path)
    except ValueError as e:  # the message names the file, line and column
        raise BenchmarkDataError(str(e)) from e


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        for lineno, record, _ in iter_jsonl(path):
            yield lineno, record
    except ValueError as e:  # a corrupt line; the message names the file, line and column
        raise BenchmarkDataError(str(e)) from None


def field_of(record: Mapping[str, Any], key: str, where: str) -> Any:
    """record[key], or an error that names the file/line (`where`) and the missing field."""
    try:
        return record[key]
    except (KeyError, TypeError):
        raise BenchmarkDataError(f"{where}: missing field {key!r}") from None


def require_answers(name: str, questions: Sequence[Question], answers: Mapping[str, str]) -> None:
    missing = [q.qid for q in questions if q.qid not in answers]
    if missing:
        raise MissingAnswerError(
            f"{name}: no answer for {len(missing)} of {len(questions)} questions (first: question_id "
            f"{missing[0]!r}); generate them or pass the complete answer file"
        )


def decode_base64_image(cell: str, where: str) -> bytes:
    try:
        return base64.b64decode(cell, validate=True)
    except ValueError as e:
        raise BenchmarkDataError(f"{where}: field 'image' is not valid base64: {e}") from e


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
