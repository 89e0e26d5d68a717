"""Validation and the raw reader: every report code at the right FILE:LINE, BOM and encodings,
blank lines, JSON-array files, the refusal rules, and bounded report sizes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from catalog.errors import InvalidInput
from datasets_prep import reader as reader_module
from datasets_prep.formats import get_format
from datasets_prep.reader import RawReader
from datasets_prep.rows import Row
from datasets_prep.validate import (
    CODES,
    MAX_KEPT,
    MAX_SHOWN,
    FileResult,
    InvalidRows,
    Report,
    canonical_line,
    refuse_if_invalid,
    resolve_format,
    shorten,
    valid_lines,
)
from tests.conftest import ADGEN_DEV, FAULTS_TEST, FAULTS_TEXT_ANSWER, FAULTS_TRAIN

GOOD = {"instruction": "抽取：", "input": "风扇不转", "output": "风扇_部件故障_不转"}


def write(path: Path, *lines: str | bytes | dict) -> Path:
    """Write raw lines: dicts as JSON, str as UTF-8 text, bytes as they are."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            f.write((line.encode("utf-8") if isinstance(line, str) else line) + b"\n")
    return path


def check(path: Path, fmt: str = "triples", seen: set[bytes] | None = None):
    """Run validation over one file: (canonical rows, report lines, FileResult, Report)."""
    report, result = Report(), FileResult(str(path))
    seen = set() if seen is None else seen
    lines = list(valid_lines(RawReader(path), get_format(fmt), seen, report, result))
    rows = [Row.from_json(json.loads(line)) for line in lines]
    return rows, report.lines(), result, report


def test_every_code_is_reported_at_its_file_and_line(tmp_path):
    path = write(
        tmp_path / "bad.jsonl",
        GOOD,  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        {"instruction": "i", "output": "o"},  # 4: no input
        {"instruction": "i", "input": "   ", "output": "o"},  # 5
        {"instruction": "i", "input": 7, "output": "o"},  # 6
        '{"instruction": "caf\xe9", "input": "x", "output": "o"}'.encode("latin-1"),  # 7
        "",  # 8: blank, skipped silently
        GOOD,  # 9: duplicate of line 1
        '{"instruction": "i", "input": "\\ud800", "output": "o"}',  # 10: a lone surrogate
        "42",  # 11
    )
    rows, lines, result, report = check(path)
    assert [line.split(": ")[0:2] for line in lines] == [
        [f"{path}:2", "invalid-json"],
        [f"{path}:3", "not-object"],
        [f"{path}:4", "missing-field"],
        [f"{path}:5", "empty-field"],
        [f"{path}:6", "wrong-type"],
        [f"{path}:7", "invalid-utf8"],
        [f"{path}:9", "duplicate-row"],
        [f"{path}:10", "invalid-utf8"],
        [f"{path}:11", "not-object"],
    ]
    assert "byte 0xe9 at column 21" in lines[5] and "UTF-8" in lines[5]
    assert "found a number" in lines[-1]
    assert rows == [Row(**GOOD), Row(**GOOD)]  # the duplicate is kept: a warning, not an error
    assert (report.errors, report.warnings, result.rows) == (8, 1, 2)
    assert {line.split(": ")[1] for line in lines} <= set(CODES)


def test_leading_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    body = json.dumps(GOOD, ensure_ascii=False).encode() + b"\r\n\r\n   \n"
    path.write_bytes(b"\xef\xbb\xbf" + body + json.dumps({**GOOD, "input": "二"}).encode() + b"\r\n")
    rows, lines, result, _ = check(path)
    assert lines == []
    assert [r.input for r in rows] == ["风扇不转", "二"]
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_latin1_file_is_reported_line_by_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        "\n".join(
            json.dumps({"text": f"caf\xe9 {i}", "answer": "x"}, ensure_ascii=False) for i in range(3)
        ).encode("latin-1")
    )
    rows, lines, _, _ = check(path)
    assert rows == []
    assert [line.split(": ")[:2] for line in lines] == [[f"{path}:{i}", "invalid-utf8"] for i in (1, 2, 3)]


def test_utf16_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes(json.dumps(GOOD).encode("utf-16"))
    with pytest.raises(InvalidInput, match="UTF-16-encoded; re-save it as UTF-8"):
        check(path)


def test_canonical_lines_match_what_canonical_write_rows_writes(tmp_path):
    from datasets_prep.canonical import write_rows

    row = Row("指令", "输入", "输出", system="s", history=(("u", "a"),))
    write_rows(tmp_path / "x.jsonl", [row])
    assert canonical_line(row) == (tmp_path / "x.jsonl").read_bytes()


def test_duplicates_are_found_across_files(tmp_path):
    seen: set[bytes] = set()
    check(write(tmp_path / "train.jsonl", GOOD), seen=seen)
    rows, lines, _, report = check(write(tmp_path / "test.jsonl", {"input": "x", **GOOD}), seen=seen)
    assert len(rows) == 1 and report.warnings == 1
    assert lines == [f"{tmp_path / 'test.jsonl'}:1: duplicate-row: same row as an earlier one (kept)"]


# ---------------------------------------------------------------- JSON array files


def test_json_array_file_reads_rows_with_their_lines(tmp_path, monkeypatch):
    rows = [{"instruction": f"Q{i}", "input": "", "output": f"答{i}" * 50} for i in range(40)]
    text = "\ufeff[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in rows) + "\n]\n"
    path = tmp_path / "alpaca.json"
    path.write_text(text, encoding="utf-8")
    for chunk in (1, 7, 1 << 20):  # elements and the BOM cut at every place, and in one piece
        monkeypatch.setattr(reader_module, "_CHUNK", chunk)
        reader = RawReader(path)
        records = list(reader.records())
        assert reader.is_array
        assert [r.value for r in records] == rows
        assert [r.line for r in records[:3]] == [2, 7, 12]  # each element spans 5 lines
        assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("text", "values", "error"),
    [
        ("[]", [], None),
        ('[{"a": 1}, 2]', [{"a": 1}, 2], None),
        ('[{"a": 1},\n{"a": 2\n', [{"a": 1}], (3, "invalid-json")),
        ('[{"a": 1},]', [{"a": 1}], (1, "invalid-json")),
        ('[{"a": 1} {"b": 2}]', [{"a": 1}], (1, "invalid-json")),
        ('[{"a": 1}]\n{"b": 2}', [{"a": 1}], (2, "invalid-json")),
    ],
)
def test_json_array_edge_cases(tmp_path, text, values, error):
    path = tmp_path / "a.json"
    path.write_text(text)
    reader = RawReader(path)
    records = list(reader.records())
    assert [r.value for r in records if r.error is None] == values
    assert [(r.line, r.error.code) for r in records if r.error] == ([error] if error else [])
    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_json_array_with_latin1_bytes_stops_at_that_line(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(reader_module, "_CHUNK", chunk)
    path = tmp_path / "a.json"
    path.write_bytes(b'[{"text": "a", "answer": "b"},\n{"text": "caf\xe9", "answer": "b"}]')
    rows, lines, result, _ = check(path)
    assert len(rows) == 1 and result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert lines[0].startswith(f"{path}:2: invalid-utf8:")


# ---------------------------------------------------------------- format resolution and refusal


def test_resolve_format_auto_on_the_real_files():
    assert resolve_format("auto", str(FAULTS_TEXT_ANSWER)).name == "triples"
    assert resolve_format("auto", str(FAULTS_TEST)).name == "alpaca"
    assert resolve_format("adgen", str(ADGEN_DEV)).name == "adgen"
    with pytest.raises(InvalidInput, match=f"{ADGEN_DEV}:1 .*--format adgen or --format alpaca"):
        resolve_format("auto", str(ADGEN_DEV))


def test_resolve_format_auto_skips_bad_lines_and_needs_an_object(tmp_path):
    path = write(tmp_path / "f.jsonl", "oops", "[1]", {"text": "t", "answer": "a"})
    assert resolve_format("auto", str(path)).name == "triples"
    with pytest.raises(InvalidInput, match="no JSON object"):
        resolve_format("auto", str(write(tmp_path / "g.jsonl", "[1]", "")))


def test_real_training_file_is_valid_including_its_empty_outputs():
    rows, lines, result, _ = check(FAULTS_TRAIN)
    assert lines == [] and result.rows == 120
    assert sum(1 for r in rows if r.output == "") == 2


def test_refusal_names_every_bad_line_and_the_way_out(tmp_path):
    path = write(tmp_path / "f.jsonl", GOOD, "x", "y")
    _, _, result, report = check(path)
    with pytest.raises(InvalidRows) as info:
        refuse_if_invalid(report, [result], get_format("triples"), skip_invalid=False)
    assert "2 invalid rows" in info.value.summary and "--skip-invalid" in info.value.summary
    assert info.value.report == [f"{path}:2: invalid-json: Expecting value at column 1",
                                 f"{path}:3: invalid-json: Expecting value at column 1"]  # fmt: skip
    assert str(info.value).splitlines()[1:] == info.value.report
    refuse_if_invalid(report, [result], get_format("triples"), skip_invalid=True)  # the valid row stays


def test_no_valid_rows_is_refused_even_when_skipping(tmp_path):
    _, _, result, report = check(write(tmp_path / "f.jsonl", "x", ""))
    with pytest.raises(InvalidRows, match="has no valid rows"):
        refuse_if_invalid(report, [result], get_format("triples"), skip_invalid=True)
    _, _, empty, report = check(write(tmp_path / "empty.jsonl"))
    with pytest.raises(InvalidRows, match="empty.jsonl has no valid rows"):
        refuse_if_invalid(report, [empty], get_format("triples"), skip_invalid=True)


def test_report_is_bounded_and_says_how_many_more(tmp_path):
    path = write(tmp_path / "f.jsonl", GOOD, *["x"] * (MAX_KEPT + 20))
    _, _, result, report = check(path)
    assert report.errors == MAX_KEPT + 20 and len(report.kept) == MAX_KEPT
    stored = report.lines()
    assert len(stored) == MAX_KEPT + 1 and stored[-1] == "... and 20 more"
    shown = shorten(stored)  # what the CLI prints from a stored report
    assert len(shown) == MAX_SHOWN + 1 and shown[-1] == f"... and {MAX_KEPT + 20 - MAX_SHOWN} more"
    with pytest.raises(InvalidRows) as info:
        refuse_if_invalid(report, [result], get_format("triples"), skip_invalid=False)
    assert len(info.value.report) == MAX_SHOWN + 1
