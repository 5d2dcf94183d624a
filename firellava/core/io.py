"""Files between stages: written to a temporary name and renamed when complete, so a reader never sees a
partial file that looks finished."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


def iter_jsonl(path: str | Path, hasher: Any = None) -> Iterator[tuple[int, Any, str]]:
    """(line number, record, its JSON text) for each non-blank line; `hasher.update` sees every byte read."""
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
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}: invalid JSON at line {number}, column {e.colno}: {e.msg}"
                ) from None
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {number} is not UTF-8 ({e.reason})") from None
            yield number, value, text
