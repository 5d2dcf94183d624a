"""A content-addressed cache of the toy world's pretrained models (tokenizer, tower, LLM, teacher), as a real run
reuses the CLIP and Vicuna it downloaded once: a second toy world with the same config and code copies them
instead of training them again.

The key hashes everything that decides the models' bytes: the toy world spec (less what only touches the
benchmark files or this cache), the source of the packages that build them (the toy world, the chat format and
tokenization, the teacher's datagen prompts), and the versions of the libraries that train them. An entry is
written under a temporary name and renamed when complete, so a killed run leaves no half entry."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers

from firellava.config import to_node

PACKAGE = Path(__file__).resolve().parents[1]
# Packages whose code decides the models: the toy world, the chat format and tokenization, datagen's prompts.
CODE = ("toy", "core", "datagen")
NOT_IN_KEY = ("overwrite", "cache_dir", "benchmark_questions")
RECORD = "record.json"


def model_key(spec: Any) -> str:
    node = {k: v for k, v in to_node(spec).items() if k not in NOT_IN_KEY}
    h = hashlib.sha256(json.dumps(node, sort_keys=True).encode())
    for package in CODE:
        for path in sorted((PACKAGE / package).rglob("*.py")):
            h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    versions = (
        platform.python_version(),
        torch.__version__,
        transformers.__version__,
        tokenizers.__version__,
    )
    h.update(repr(versions).encode())
    return h.hexdigest()[:32]


def entry_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / key


def restore(cache_dir: str | Path, key: str, models_dir: Path) -> dict[str, Any] | None:
    """Copy a cached entry's models into `models_dir` and return its record, or None on a miss."""
    entry = entry_dir(cache_dir, key)
    if not (entry / RECORD).is_file():
        return None
    shutil.copytree(entry / "models", models_dir)
    return json.loads((entry / RECORD).read_text())


def store(cache_dir: str | Path, key: str, models_dir: Path, record: dict[str, Any]) -> Path:
    """Save `models_dir` and its record (probe figures, teacher training) under the key."""
    entry = entry_dir(cache_dir, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=entry.parent))
    try:
        shutil.copytree(models_dir, tmp / "models")
        (tmp / RECORD).write_text(json.dumps(record, indent=1))
        if not entry.exists():  # another run may have stored the same key meanwhile: same bytes
            os.replace(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return entry
