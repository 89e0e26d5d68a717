"""One JSON Lines line is bounded by FT_MAX_LINE_BYTES (datasets_prep/reader.py), through the real
`ft datasets add`: a line one byte over the bound fails with `FILE:LINE` and changes nothing, lines at
the bound are accepted, and a bad setting is a one-line error."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAULTS_TEST

BOUND = 4096


@pytest.fixture
def ftc(ft, monkeypatch):
    """`ft` on an initialised catalog, with lines bounded at BOUND bytes."""
    ft("init")
    monkeypatch.setenv("FT_MAX_LINE_BYTES", str(BOUND))
    return ft


def line_of(size: int, n: int = 0) -> bytes:
    """A real fault-triples row padded (its input, with ASCII) to exactly `size` bytes, newline excluded."""
    row = json.loads(FAULTS_TEST.read_text(encoding="utf-8").splitlines()[n])
    raw = json.dumps(row, ensure_ascii=False).encode()
    assert len(raw) <= size, "the row is longer than the wanted size"
    row["input"] += "x" * (size - len(raw))
    raw = json.dumps(row, ensure_ascii=False).encode()
    assert len(raw) == size
    return raw


def listing(ft) -> list[dict]:
    return json.loads(ft("datasets", "list", "--json").output)


def test_a_line_over_the_bound_fails_with_file_and_line_and_changes_nothing(ftc, tmp_path, settings):
    data = tmp_path / "long.jsonl"
    data.write_bytes(line_of(2048) + b"\n" + line_of(BOUND, 1) + b"\n" + line_of(BOUND + 1, 2) + b"\n")
    result = ftc("datasets", "add", "long", str(data), "--format", "triples", ok=False)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    bound = f"line is longer than {BOUND:,} bytes (FT_MAX_LINE_BYTES)"
    assert lines == [f"Error: {data}:3: {bound}: is this really JSON Lines?"]
    assert listing(ftc) == []
    assert [p for p in settings.artifacts.rglob("*") if p.is_file()] == []


def test_a_last_line_over_the_bound_without_newline_fails_too(ftc, tmp_path):
    data = tmp_path / "tail.jsonl"
    data.write_bytes(line_of(2048) + b"\n" + line_of(BOUND + 1, 1))
    result = ftc("datasets", "add", "tail", str(data), "--format", "triples", ok=False)
    assert result.exit_code == 2 and f"{data}:2: line is longer than" in result.output
    assert listing(ftc) == []


def test_lines_at_the_bound_are_accepted(ftc, tmp_path):
    data = tmp_path / "full.jsonl"
    data.write_bytes(b"".join(line_of(size, n) + b"\n" for n, size in enumerate([BOUND, BOUND - 1, BOUND])))
    out = ftc("datasets", "add", "full", str(data), "--format", "triples").output
    assert "Registered full:1 (triples): 3 rows" in out
    [ds] = listing(ftc)
    assert ds["invalid_count"] == 0


def test_without_the_setting_the_default_bound_takes_much_longer_lines(ft, tmp_path, monkeypatch):
    ft("init")
    monkeypatch.delenv("FT_MAX_LINE_BYTES", raising=False)
    data = tmp_path / "wide.jsonl"
    data.write_bytes(line_of(BOUND * 16) + b"\n")
    out = ft("datasets", "add", "wide", str(data), "--format", "triples").output
    assert "Registered wide:1 (triples): 1 rows" in out


@pytest.mark.parametrize("value", ["0", "-5", "8MB", "1e6", " 12"])
def test_a_bad_setting_is_a_one_line_error(ftc, tmp_path, monkeypatch, value):
    monkeypatch.setenv("FT_MAX_LINE_BYTES", value)
    data = tmp_path / "ok.jsonl"
    data.write_bytes(line_of(2048) + b"\n")
    result = ftc("datasets", "add", "ok", str(data), "--format", "triples", ok=False)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: FT_MAX_LINE_BYTES must be a positive number of bytes, got {value!r}"
    ]
    assert listing(ftc) == []
