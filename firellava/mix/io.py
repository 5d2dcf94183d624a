"""Reading the mix's inputs record by record, hashing them as they are read.

The real `llava_v1_5_mix665k.json` is about 1 GB of text with non-ASCII ShareGPT chats: read whole into one
Python str it can take up to 4 bytes a character before a single record is parsed. `JsonListReader` instead
decodes it in chunks and hands out one record at a time, so the non-commercial records can be dropped as they
pass and memory holds only what the mix keeps. Errors name the file and the line/column, like
`firellava.core.io.read_json`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
CHUNK_BYTES = 1 << 23
# A record this long that still does not parse is corrupt, not cut off by the chunk boundary.
MAX_RECORD_CHARS = 1 << 26


class JsonListReader:
    """Iterate the elements of a top-level JSON list; `sha256` is the file's digest once iteration ends."""

    def __init__(self, path: str | Path, *, chunk_bytes: int = CHUNK_BYTES):
        self.path = Path(path)
        self.chunk_bytes = chunk_bytes
        self._hash = hashlib.sha256()
        self.sha256: str | None = None
        self.bytes = 0

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        for index, value, _ in self._scan(keep_text=False):
            yield index, value

    def with_text(self) -> Iterator[tuple[int, Any, str]]:
        """(index, value, the value's JSON text exactly as in the file): lets the mix copy a record without
        re-encoding it, and keep it in memory as compact text rather than as nested Python objects."""
        return self._scan(keep_text=True)

    def _scan(self, keep_text: bool) -> Iterator[tuple[int, Any, str]]:
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: file not found")
        decoder = json.JSONDecoder()
        # The digest is computed by a second thread (hashlib releases the GIL) while this one parses.
        with self.path.open("rb") as f, ThreadPoolExecutor(max_workers=1) as hasher:
            hashing: Future | None = None
            utf8 = codecs.getincrementaldecoder("utf-8")()
            buf, pos, eof = "", 0, False
            line, col = 1, 0  # where buf[0] sits in the file (1-based line, 0-based column)

            def fill() -> None:
                nonlocal buf, pos, eof, line, col, hashing
                if eof:
                    return
                chunk = f.read(self.chunk_bytes)
                if hashing is not None:
                    hashing.result()
                hashing = hasher.submit(self._hash.update, chunk)
                self.bytes += len(chunk)
                eof = not chunk
                try:
                    more = utf8.decode(chunk, final=eof)
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{self.path}: not UTF-8 near byte {self.bytes - len(chunk) + e.start}"
                    ) from e
                newlines = buf.count("\n", 0, pos)
                if newlines:
                    line += newlines
                    col = pos - buf.rfind("\n", 0, pos) - 1
                else:
                    col += pos
                buf, pos = buf[pos:] + more, 0

            def where(p: int) -> str:
                newlines = buf.count("\n", 0, p)
                column = p - buf.rfind("\n", 0, p) if newlines else col + p + 1
                return f"line {line + newlines}, column {column}"

            def fail(p: int, msg: str) -> ValueError:
                return ValueError(f"{self.path}: invalid JSON at {where(p)}: {msg}")

            def skip_ws() -> str:
                """The next non-blank character ('' at the end of the file)."""
                nonlocal pos
                while True:
                    pos = _WS.match(buf, pos).end()
                    if pos < len(buf) or eof:
                        return buf[pos] if pos < len(buf) else ""
                    fill()

            if skip_ws() != "[":
                raise fail(pos, "expected a JSON list of records")
            pos += 1
            index = 0
            c = skip_ws()
            done = c == "]"
            if done:
                pos += 1
            while not done:
                if c == "":
                    raise fail(pos, "unexpected end of file inside the list")
                if c == "]":
                    raise fail(pos, "expected a record after ','")
                while True:
                    try:
                        value, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as e:
                        if eof or len(buf) - pos > MAX_RECORD_CHARS:
                            raise fail(e.pos, e.msg) from None
                        fill()
                        continue
                    if end < len(buf) or eof:
                        break
                    fill()  # a value ending exactly at the chunk end may continue in the next one
                text_of = buf[pos:end] if keep_text else ""
                pos = end
                yield index, value, text_of
                index += 1
                # The separator usually follows at once; the regex only runs on blanks or at a chunk end.
                c = buf[pos] if pos < len(buf) else ""
                if c != "," and c != "]":
                    c = skip_ws()
                if c == "]":
                    pos += 1
                    done = True
                    break
                if c != ",":
                    raise fail(pos, "expected ',' or ']' after a record")
                pos += 1
                c = buf[pos] if pos < len(buf) else ""
                if c == "" or c in " \t\n\r":
                    c = skip_ws()
            if skip_ws() != "":
                raise fail(pos, "extra data after the list")
            hashing.result()
        self.sha256 = self._hash.hexdigest()
