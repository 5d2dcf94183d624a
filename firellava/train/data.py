"""LLaVA records -> training examples, through the one chat format; the collator that pads them.

Every record is checked against the record schema (`core.records`) and encoded once at start (all records, on
every rank, deterministically) so that bad input fails before any step with the file, record id and field
named, records whose labels would be entirely masked are counted and left out instead of silently training on
nothing, and the sampler gets real token lengths. Each distinct image file is opened once at start too: PIL
reads only its header, which catches what is not an image at all (an empty file, an HTML error page saved as
.jpg) at the cost of one small read per image. A file whose header is fine but whose pixel data is cut short
still fails only when its batch loads, naming the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from firellava.core.chat_format import IGNORE_INDEX, ChatFormatError, encode, expand_images
from firellava.core.io import read_json
from firellava.core.progress import Progress
from firellava.core.records import display_id, record_problem

log = logging.getLogger(__name__)
MAX_ERRORS_SHOWN = 10


class DataError(ValueError):
    """Bad training input; the message names the file, the record and the field."""


@dataclass(frozen=True)
class EncodingSpec:
    template: str  # "plain" | "vicuna_v1"
    max_length: int
    image_token_id: int
    image_seq_length: int  # copies of the image token one image occupies (= vision features per image)
    system: str | None = None


@dataclass
class ScanReport:
    records: int = 0
    kept: int = 0
    with_image: int = 0
    truncated: list[str] = field(default_factory=list)  # longer than max_length after image expansion
    fully_masked: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "kept": self.kept,
            "with_image": self.with_image,
            "truncated": len(self.truncated),
            "truncated_ids": self.truncated[:MAX_ERRORS_SHOWN],
            "fully_masked": len(self.fully_masked),
        }


def encode_record(
    record: Mapping[str, Any], tokenizer: Any, spec: EncodingSpec, where: str
) -> tuple[list, list, bool]:
    """input_ids and labels with the image placeholder expanded, cut to max_length; and whether it was cut.

    The record must have the schema (`core.records`; the dataset checks every record at start). Only the tail
    is ever cut, and never through the image: a max_length that cannot hold the whole image plus what precedes
    it is an error, not a silent half image.
    """
    turns = record["conversations"]
    has_image = "image" in record
    try:
        enc = encode(turns, tokenizer, template=spec.template, system=spec.system, record_id=where)
    except (ChatFormatError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{where}: field 'conversations': {e}") from e
    input_ids = expand_images(enc.input_ids, spec.image_token_id, spec.image_seq_length)
    labels = expand_images(enc.input_ids, spec.image_token_id, spec.image_seq_length, enc.labels)
    truncated = len(input_ids) > spec.max_length
    if truncated:
        if has_image:
            image_end = max(i for i, t in enumerate(input_ids) if t == spec.image_token_id) + 1
            if image_end > spec.max_length:
                raise DataError(
                    f"{where}: max_length {spec.max_length} is too short to hold the image "
                    f"({spec.image_seq_length} image tokens end at position {image_end})"
                )
        input_ids, labels = input_ids[: spec.max_length], labels[: spec.max_length]
    return input_ids, labels, truncated


class LlavaDataset(torch.utils.data.Dataset):
    """LLaVA-format JSON (`{id, image?, conversations}`) as training examples for LlavaForConditionalGeneration.

    Images go through the processor's image processor: `square` centre-crops (pretraining), `pad` pads to a
    square with the CLIP mean colour first (finetuning). Text-only records have no pixel values.
    """

    def __init__(
        self,
        data_json: str | Path,
        image_folder: str | Path,
        tokenizer: Any,
        image_processor: Any,
        spec: EncodingSpec,
        *,
        image_aspect_ratio: str = "pad",
    ) -> None:
        self.data_json = Path(data_json)
        self.image_folder = Path(image_folder)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spec = spec
        self.do_pad = image_aspect_ratio == "pad"
        records = read_json(self.data_json)
        if not isinstance(records, list):
            raise DataError(
                f"{self.data_json}: expected a JSON list of LLaVA records, got {type(records).__name__}"
            )
        self.records: list[Mapping[str, Any]] = []
        self.ids: list[str] = []
        self.lengths: list[int] = []  # token lengths, negative for text-only records (the sampler's modality)
        self._image_errors: dict[Path, str | None] = {}  # per distinct file: why its header did not read
        self.report = self._scan(records)
        self._image_errors.clear()

    def _where(self, record: Any, index: int) -> str:
        return f"{self.data_json}: record {display_id(record, index)!r} (index {index})"

    def _scan(self, records: Sequence[Any]) -> ScanReport:
        start = time.perf_counter()
        report = ScanReport(records=len(records))
        errors: list[str] = []
        progress = Progress("training data scan", len(records), unit="records", logger=log)
        for index, record in enumerate(records):
            progress.update()
            where = self._where(record, index)
            try:
                problem = record_problem(record)
                if problem is not None:
                    raise DataError(f"{where}: {problem}")
                if "image" in record:
                    self._image_path(record, where, check=True)
                input_ids, labels, truncated = encode_record(record, self.tokenizer, self.spec, where)
            except DataError as e:
                errors.append(str(e))
                continue
            if all(label == IGNORE_INDEX for label in labels):
                report.fully_masked.append(display_id(record, index))
                continue
            if truncated:
                report.truncated.append(display_id(record, index))
            report.with_image += "image" in record
            self.records.append(record)
            self.ids.append(display_id(record, index))
            self.lengths.append(len(input_ids) if "image" in record else -len(input_ids))
        if errors:
            shown = "\n  ".join(errors[:MAX_ERRORS_SHOWN])
            more = (
                f"\n  ... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
            )
            raise DataError(f"{len(errors)} bad record(s) in {self.data_json}:\n  {shown}{more}")
        if report.fully_masked:
            log.warning(
                "%d record(s) of %s have no supervised token after truncation to %d and are left out: %s",
                len(report.fully_masked),
                self.data_json,
                self.spec.max_length,
                report.fully_masked[:MAX_ERRORS_SHOWN],
            )
        if report.truncated:
            # Named before any step: a record cut on one rank only is how multi-node LLaVA runs hang.
            log.warning(
                "%d kept record(s) of %s are longer than max_length %d after image expansion and are cut at "
                "the end: %s",
                len(report.truncated),
                self.data_json,
                self.spec.max_length,
                report.truncated[:MAX_ERRORS_SHOWN],
            )
        report.kept = len(self.records)
        if not self.records:
            raise DataError(f"{self.data_json}: no trainable record (of {len(records)})")
        log.info(
            "%s: %d records, %d kept (%d with an image, %d truncated, %d fully masked) in %.1fs",
            self.data_json,
            report.records,
            report.kept,
            report.with_image,
            len(report.truncated),
            len(report.fully_masked),
            time.perf_counter() - start,
        )
        return report

    def _image_path(self, record: Mapping[str, Any], where: str, check: bool = False) -> Path:
        path = self.image_folder / record["image"]  # the schema check made it a relative path
        if not check:
            return path
        if path not in self._image_errors:
            self._image_errors[path] = _header_error(path)
        if self._image_errors[path]:
            raise DataError(f"{where}: field 'image': {self._image_errors[path]}")
        return path

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        where = f"{self.data_json}: record {self.ids[i]!r}"
        input_ids, labels, _ = encode_record(record, self.tokenizer, self.spec, where)
        item: dict[str, Any] = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if "image" in record:
            path = self._image_path(record, where)
            try:
                with Image.open(path) as img:
                    image = img.convert("RGB")
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{where}: field 'image': cannot read {path}: {e}") from e
            pixels = self.image_processor(image, do_pad=self.do_pad, return_tensors="pt")["pixel_values"]
            item["pixel_values"] = pixels[0]
        return item


def _header_error(path: Path) -> str | None:
    """Why `path` is not an image PIL can open (its header only), or None."""
    if not path.is_file():
        return f"file not found: {path}"
    try:
        with Image.open(path):
            return None
    except (OSError, UnidentifiedImageError) as e:
        return f"cannot read {path}: {e}"


def image_fields(config: Any) -> dict[str, Any]:
    """What the collators take from a LLaVA config: the image token, its copies per image, and the shape of the
    zero image a micro-batch without one gets."""
    size = config.vision_config.image_size
    return {
        "image_token_id": config.image_token_id,
        "image_seq_length": config.image_seq_length,
        "image_shape": (3, size, size),
    }


@dataclass(frozen=True)
class Collator:
    """Right-pads input_ids with the pad id and labels with -100; stacks the pixel values present, in order.

    A micro-batch without any image gets one extra row made only of image tokens, with a zero image and no
    label: the vision tower and projector then run in every step on every rank, as LLaVA's dummy image makes
    them, which ZeRO-3 needs (ranks must gather the same parameters in the same order). The row adds no loss.
    """

    pad_token_id: int
    image_token_id: int
    image_seq_length: int
    image_shape: tuple[int, int, int]

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [it["input_ids"] for it in items]
        labels = [it["labels"] for it in items]
        pixels = [it["pixel_values"] for it in items if "pixel_values" in it]
        if not pixels:
            ids.append(torch.full((self.image_seq_length,), self.image_token_id, dtype=torch.long))
            labels.append(torch.full((self.image_seq_length,), IGNORE_INDEX, dtype=torch.long))
            pixels.append(torch.zeros(self.image_shape))
        width = max(len(t) for t in ids)
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        label_ids = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (t, lab) in enumerate(zip(ids, labels)):
            input_ids[row, : len(t)] = t
            label_ids[row, : len(lab)] = lab
            attention[row, : len(t)] = 1
        return {
            "input_ids": input_ids,
            "labels": label_ids,
            "attention_mask": attention,
            "pixel_values": torch.stack(pixels),
        }
