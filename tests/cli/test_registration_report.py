"""`ft datasets add` on a d2q-shaped dataset written in tmp_path, through the real CLI: errors before
warnings and counted per code, `test-in-train` leakage, `--skip-invalid` saying why a file has no
valid row, `auto` saying what it picked, and a GBK file told once to be re-saved as UTF-8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TRAIN = [{"text": f"段落{i}讲述了故障{i}的原因。", "answer": f"故障{i}的原因是什么？"} for i in range(12)]
TEST = [
    {"text": TRAIN[i]["text"], "answer": [TRAIN[i]["answer"], f"为什么会出现故障{i}？"]} for i in (0, 1)
] + [
    {"text": f"新段落{i}。", "answer": [f"问题{i}？", f"问题{i}是什么？", f"哪个问题{i}？"]} for i in range(3)
]


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def d2q(tmp_path) -> tuple[Path, Path]:
    """train.json: 12 rows and an exact duplicate of its first; test.json: 5 multi-reference rows, the
    first two with the prompts of training rows 1 and 2."""
    return write(tmp_path / "train.json", [*TRAIN, TRAIN[0]]), write(tmp_path / "test.json", TEST)


@pytest.fixture
def ftc(ft):
    ft("init")
    return ft


def test_d2q_registers_with_warnings_for_duplicates_and_leakage(ftc, d2q):
    train, test = d2q
    result = ftc("datasets", "add", "d2q", str(train), "--test", str(test))
    assert result.stderr.splitlines() == [
        f"--format auto: read {train}:1 as triples: its keys (answer, text) fit "
        '{"instruction", "input", "output"} or {"text", "answer"}; else pass '
        "--format triples|adgen|alpaca|sharegpt, or --format columns --prompt-key K --response-key K"
    ]
    assert result.stdout.splitlines()[0] == "Registered d2q:1 (triples): 18 rows (train 13, test 5)"
    assert result.stdout.splitlines()[2:] == [
        "Report:",
        "3 warnings (the rows are kept): duplicate-row 1, test-in-train 2",
        f"{train}:13: duplicate-row: same row as an earlier one (kept)",
        f"{test}:1: test-in-train: same prompt as {train}:1 (kept)",
        f"{test}:2: test-in-train: same prompt as {train}:2 (kept)",
    ]
    shown = json.loads(ftc("datasets", "show", "d2q", "--json", "--rows", "5").stdout)
    assert shown["invalid_count"] == 0
    first = shown["rows"]["test"][0]
    assert first["output"] == TRAIN[0]["answer"]
    assert first["references"] == [TRAIN[0]["answer"], "为什么会出现故障0？"]
    assert all("references" not in row for row in shown["rows"]["train"])


def test_errors_come_first_counted_per_code_then_warnings(ftc, d2q, tmp_path):
    train, _ = d2q
    wrong = [{"text": f"t{i}", "answer": {"q": "not a string"}} for i in range(20)]
    test = write(tmp_path / "test.json", [TEST[0], *wrong, {"text": "no answer"}])
    result = ftc("datasets", "add", "d2q", str(train), "--test", str(test), "--format", "triples", ok=False)
    assert result.exit_code == 2
    out = result.output.splitlines()
    assert out[0] == (
        f"Error: 21 invalid rows in {train} and {test} (read as --format triples): wrong-type 20 (first: "
        f"{test}:2: field 'answer' must be a string, found an object), missing-field 1 (first: {test}:22: "
        'no field \'answer\' (triples rows look like {"instruction", "input", "output"} or '
        '{"text", "answer"})); nothing was registered. Fix them, or pass --skip-invalid to register the '
        "14 valid rows:"
    )
    assert out[1] == f"{test}:2: wrong-type: field 'answer' must be a string, found an object"
    assert [line.split(": ")[1] for line in out[1:22]] == ["wrong-type"] * 20 + ["missing-field"]
    assert out[22:] == [
        "2 warnings (the rows are kept): duplicate-row 1, test-in-train 1",
        f"{train}:13: duplicate-row: same row as an earlier one (kept)",
        f"{test}:1: test-in-train: same prompt as {train}:1 (kept)",
    ]
    assert "invalid" not in " ".join(out[22:])  # a kept duplicate is never counted as invalid


def test_warnings_show_a_few_examples_per_code(ftc, tmp_path):
    train = write(tmp_path / "train.json", TRAIN + TRAIN[:8])
    out = ftc("datasets", "add", "d", str(train), "--format", "triples").stdout.splitlines()
    assert out[3:] == [
        "8 warnings (the rows are kept): duplicate-row 8",
        *(f"{train}:{n}: duplicate-row: same row as an earlier one (kept)" for n in (13, 14, 15)),
        "... and 5 more duplicate-row",
    ]


def test_skip_invalid_says_why_a_file_has_no_valid_rows(ftc, d2q, tmp_path):
    train, _ = d2q
    test = write(tmp_path / "test.json", [{"text": "a", "answer": 1}, {"text": "b", "answer": [2]}])
    result = ftc("datasets", "add", "d2q", str(train), "--test", str(test), "--skip-invalid", ok=False)
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == (
        f"Error: {test} has no valid rows (read as --format triples, picked by --format auto): wrong-type 2 "
        f"(first: {test}:1: field 'answer' must be a string, found a number); nothing was registered:"
    )


def test_a_gbk_file_is_told_once_to_be_resaved_as_utf8(ftc, tmp_path):
    gbk = tmp_path / "gbk.json"
    gbk.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TRAIN[:5]).encode("gbk"))
    expected = (
        f"Error: {gbk} is not UTF-8: re-save as UTF-8 (5 lines not UTF-8 text; first at line 1: "
        "not valid UTF-8 (byte 0xb6 at column 11))"
    )
    auto = ftc("datasets", "add", "g", str(gbk), ok=False)
    assert auto.exit_code == 2 and auto.output.splitlines() == [expected]
    given = ftc("datasets", "add", "g", str(gbk), "--format", "triples", ok=False)
    assert given.output.splitlines() == [expected + "; nothing was registered"]


def test_a_file_partly_not_utf8_says_it_once_with_the_count(ftc, tmp_path):
    path = tmp_path / "mixed.json"
    good = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TRAIN[:2]).encode()
    path.write_bytes(
        good + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TRAIN[2:5]).encode("gbk")
    )
    out = ftc("datasets", "add", "m", str(path), "--format", "triples", ok=False).output.splitlines()
    assert out[0].startswith(f"Error: 3 invalid rows in {path} (read as --format triples): invalid-utf8 3")
    assert out[1:] == [
        f"{path}:3: invalid-utf8: not UTF-8: re-save as UTF-8 (3 lines; "
        "not valid UTF-8 (byte 0xb6 at column 11))"
    ]
