"""Files between stages: written to a temporary name and renamed when complete, so a reader never sees a
partial file that looks finished."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Parse JSON; a corrupt file is reported with its name and the line/column of the problem."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}"
        ) from e


@contextmanager
def staged_dir(final: str | Path, *, overwrite: bool = False, hint: str = "") -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when the body succeeds.

    An existing non-empty `final` is refused unless `overwrite`, in which case it is replaced at the end.
    """
    final = Path(final)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise FileExistsError(f"{final} exists and is not empty; pass overwrite=true to replace it{hint}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_lines(f: TextIO, rows: Iterable[Any]) -> None:
    # One compact JSON value per line, non-ASCII text kept as it is.
    for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        _write_lines(f, rows)
    return Path(path)


def append_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Add lines at the end and flush: a file that grows batch by batch, where a kill loses at most the batch
    being written (`iter_jsonl(..., drop_torn_tail=True)` reads such a file back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        _write_lines(f, rows)
        f.flush()


def iter_jsonl(
    path: str | Path, hasher: Any = None, *, drop_torn_tail: bool = False
) -> Iterator[tuple[int, Any, str]]:
    """(line number, record, its JSON text) for each non-blank line; `hasher.update` sees every byte read.

    A line that does not parse is an error naming the file, line and column, except with `drop_torn_tail` for
    a last line without its newline: what a run killed mid-write leaves, dropped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if hasher is not None:
                hasher.update(raw)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8").strip()
                value = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if drop_torn_tail and not raw.endswith(b"\n"):
                    log.warning("%s: line %d: dropping a truncated last line (interrupted run)", path, number)
                    return
                if isinstance(e, UnicodeDecodeError):
                    raise ValueError(f"{path}: line {number} is not UTF-8 ({e.reason})") from None
                raise ValueError(
                    f"{path}: invalid JSON at line {number}, column {e.colno}: {e.msg}"
                ) from None
            yield number, value, text
