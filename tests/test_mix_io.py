"""The streaming JSON list reader: same values and digest as json.load / sha256, positioned errors."""

from __future__ import annotations

import json
import random

import pytest

from firellava.core.io import iter_jsonl, sha256_file
from firellava.mix.io import JsonListReader

RECORDS = [
    {"id": str(i), "value": "é東😀x" * random.Random(i).randint(0, 40), "n": [1, 2.5, None]}
    for i in range(300)
]


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [5, 97, 1 << 20])
def test_values_text_and_digest_match_across_chunk_sizes(tmp_path, indent, chunk):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(RECORDS, indent=indent, ensure_ascii=False), encoding="utf-8")
    reader = JsonListReader(path, chunk_bytes=chunk)
    seen = list(reader.with_text())
    assert [v for _, v, _ in seen] == RECORDS
    assert [json.loads(t) for _, _, t in seen] == RECORDS
    assert reader.sha256 == sha256_file(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (" {}", "line 1, column 2: expected a JSON list"),
        ("[1,]", "line 1, column 4: expected a record after ','"),
        ("[1 2]", "line 1, column 4: expected ',' or ']'"),
        ("[1", "line 1, column 3: expected ',' or ']'"),
        ('[{"a": 1}] x', "line 1, column 12: extra data"),
        ('[\n  {"a": 1},\n  {"a" 2}\n]', "line 3, column 8: Expecting ':' delimiter"),
        ("[", "line 1, column 2: unexpected end of file"),
    ],
)
def test_errors_name_line_and_column(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"bad.json: invalid JSON at {message}"):
        list(JsonListReader(path, chunk_bytes=2))


def test_positions_agree_with_json_module_deep_in_a_file(tmp_path):
    text = json.dumps(RECORDS, indent=2, ensure_ascii=False)
    cut = text.index('"n"', len(text) * 2 // 3)
    broken = text[: cut + 3] + ";" + text[cut + 4 :]
    path = tmp_path / "bad.json"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(broken)
    at = f"line {expected.value.lineno}, column {expected.value.colno}"
    for chunk in (64, 1 << 20):
        with pytest.raises(ValueError, match=at):
            list(JsonListReader(path, chunk_bytes=chunk))


def test_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2,}\n')
    with pytest.raises(ValueError, match=r"a.jsonl: invalid JSON at line 3, column 10"):
        list(iter_jsonl(path))
