"""JSONL files between stages: written whole (atomically) or appended, read back with positioned errors."""

from __future__ import annotations

import logging

import pytest

from firellava.core.io import append_jsonl, iter_jsonl, write_jsonl

ROWS = [{"id": 1, "text": "é東😀"}, {"id": 2, "text": "line\nbreak"}, [3]]


def test_write_then_read_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "sub" / "a.jsonl", iter(ROWS))
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == len(ROWS) and "é東😀" in text  # one line per row, non-ASCII kept
    assert [(n, row) for n, row, _ in iter_jsonl(path)] == list(enumerate(ROWS, start=1))
    assert [p.name for p in path.parent.iterdir()] == ["a.jsonl"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS[:1])

    def rows():
        yield {"id": 9}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert [row for _, row, _ in iter_jsonl(path)] == ROWS[:1]
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]


def test_append_and_torn_tail(tmp_path, caplog):
    path = tmp_path / "answers" / "a.jsonl"
    append_jsonl(path, ROWS[:1])
    append_jsonl(path, ROWS[1:2])
    assert [row for _, row, _ in iter_jsonl(path)] == ROWS[:2]
    with path.open("ab") as f:
        f.write('{"id": 3, "text": "é'.encode()[:-1])  # killed mid-write, inside a UTF-8 character
    with pytest.raises(ValueError, match=r"a.jsonl: line 3 is not UTF-8"):
        list(iter_jsonl(path))
    with caplog.at_level(logging.WARNING):
        assert [row for _, row, _ in iter_jsonl(path, drop_torn_tail=True)] == ROWS[:2]
    assert "line 3: dropping a truncated last line" in caplog.text


def test_a_bad_line_before_the_last_is_an_error_even_when_tails_may_be_torn(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n{"id": \n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"a.jsonl: invalid JSON at line 2, column 7"):
        list(iter_jsonl(path, drop_torn_tail=True))
    with pytest.raises(FileNotFoundError, match="missing.jsonl: file not found"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))
