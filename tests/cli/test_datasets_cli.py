"""`ft datasets ...` through the real CLI: add, list, show and rm with their --json forms, the
validation report on refusal, one-line errors with non-zero exits, and every command's help."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ADGEN_DEV, FAULTS_TEST, FAULTS_TEXT_ANSWER, FAULTS_TRAIN


@pytest.fixture
def ftc(ft):
    """`ft` on an initialised catalog."""
    ft("init")
    return ft


def listing(ft, *args: str) -> list[dict]:
    return json.loads(ft("datasets", "list", "--json", *args).output)


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line]


def test_add_faults_with_test_file_and_list(ftc, settings):
    out = ftc(
        "datasets", "add", "faults", str(FAULTS_TRAIN), "--format", "triples", "--test", str(FAULTS_TEST)
    ).output
    assert "Registered faults:1 (triples): 170 rows (train 120, test 50)" in out
    [ds] = listing(ftc)
    assert ds["ref"] == "faults:1" and ds["splits"] == {"train": 120, "test": 50}
    assert len(ds["sha256"]) == 64 and f"sha256: {ds['sha256']}" in out
    assert ds["created_by"] == "tester" and ds["invalid_count"] == 0
    table = ftc("datasets", "list").output.splitlines()
    assert table[0].split() == "NAME VERSION FORMAT ROWS SPLITS INVALID SHA256 CREATED BY".split()
    assert table[1].split()[:7] == ["faults", "1", "triples", "170", "train=120", "test=50", "0"]
    assert ds["sha256"][:12] in table[1]


def test_adgen_split_is_the_same_on_every_run(ftc):
    args = (
        "datasets",
        "add",
        "adgen",
        str(ADGEN_DEV),
        "--format",
        "adgen",
        "--split",
        "test=20",
        "--seed",
        "0",
    )
    first = json.loads(ftc(*args, "--json").output)
    assert first["created"] and first["splits"] == {"train": 100, "test": 20}
    assert first["report"][0] == f"{ADGEN_DEV}:120: duplicate-row: same row as an earlier one (kept)"
    assert [line.split(": ")[1] for line in first["report"][1:]] == ["split-kept-together"] * 3
    again = ftc(*args)
    assert "adgen:1 already holds this content" in again.output and "no new version" in again.output
    assert [d["version"] for d in listing(ftc, "--all")] == [1]
    shown = json.loads(ftc("datasets", "show", "adgen", "--json", "--rows", "100").output)
    ftc("datasets", "rm", "adgen", "--yes")
    ftc(*args)
    rerun = json.loads(ftc("datasets", "show", "adgen", "--json", "--rows", "100").output)
    assert rerun["rows"] == shown["rows"] and rerun["sha256"] == shown["sha256"]  # rebuilt from scratch


def test_broken_file_is_refused_with_every_line_and_nothing_changes(ftc, tmp_path, settings):
    lines = FAULTS_TEST.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "broken.jsonl"
    bad.write_bytes(
        "\n".join([lines[0], "{broken", lines[1], '{"text": 1, "answer": "a"}', "", lines[2]]).encode()
        + b"\n"
        + '{"text": "caf\xe9", "answer": "a"}\n'.encode("latin-1")
    )
    result = ftc("datasets", "add", "broken", str(bad), "--format", "triples", ok=False)
    assert result.exit_code == 2
    out = error_lines(result)
    assert out[0].startswith("Error: 3 invalid rows in") and "--skip-invalid" in out[0]
    assert [line.split(": ")[:2] for line in out[1:]] == [
        [f"{bad}:2", "invalid-json"],
        [f"{bad}:4", "wrong-type"],
        [f"{bad}:7", "invalid-utf8"],
    ]
    assert listing(ftc) == []
    assert [p for p in settings.artifacts.rglob("*") if p.is_file()] == []

    ok = ftc("datasets", "add", "broken", str(bad), "--format", "triples", "--skip-invalid").output
    assert (
        "Registered broken:1 (triples): 3 rows (train 3)" in ok and "Report (3 invalid rows skipped):" in ok
    )
    shown = json.loads(ftc("datasets", "show", "broken", "--json").output)
    assert shown["invalid_count"] == 3 and [r.split(": ")[0] for r in shown["report"]] == [
        f"{bad}:2",
        f"{bad}:4",
        f"{bad}:7",
    ]


def test_long_reports_are_cut_at_50_lines(ftc, tmp_path):
    bad = tmp_path / "many.jsonl"
    bad.write_text('{"text": "t", "answer": "a"}\n' + "nope\n" * 80)
    out = error_lines(ftc("datasets", "add", "many", str(bad), "--format", "triples", ok=False))
    assert len(out) == 1 + 50 + 1 and out[-1] == "... and 30 more"


def test_show_prints_counts_sources_rows_and_report(ftc):
    ftc("datasets", "add", "adgen", str(ADGEN_DEV), "--format", "adgen", "--split", "test=0.1", "--seed", "3")
    out = ftc("datasets", "show", "adgen:1", "--rows", "2").output
    assert "adgen:1 (adgen)" in out and "120 rows (train 108, test 12)" in out
    assert "seed 3, test=0.1" in out and f"source:       {ADGEN_DEV.resolve()}" in out
    assert "train (first 2 of 108):" in out and "test (first 2 of 12):" in out
    assert "input: 类型#" in out
    assert f"{ADGEN_DEV}:120: duplicate-row" in out
    data = json.loads(ftc("datasets", "show", "adgen", "--json", "--rows", "1").output)
    assert [len(v) for v in data["rows"].values()] == [1, 1]
    assert data["rows"]["test"][0]["input"].startswith("类型#")
    assert data["source_sha256"] and data["sha256"] and data["split_spec"]["seed"] == 3


def test_auto_format_and_its_error(ftc):
    out = ftc("datasets", "add", "fta", str(FAULTS_TEXT_ANSWER)).output
    assert "Registered fta:1 (triples)" in out
    result = ftc("datasets", "add", "ad", str(ADGEN_DEV), ok=False)
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "--format auto" in line and "--format adgen or --format alpaca" in line


def test_new_version_on_changed_content(ftc, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "t1", "answer": "a"}\n')
    ftc("datasets", "add", "d", str(path))
    path.write_text('{"text": "t1", "answer": "a"}\n{"text": "t2", "answer": "b"}\n')
    assert "Registered d:2" in ftc("datasets", "add", "d", str(path)).output
    assert [d["ref"] for d in listing(ftc, "--all")] == ["d:1", "d:2"]
    assert [d["ref"] for d in listing(ftc)] == ["d:2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "test=2000"], "--split test=2000: asks for 2000 rows"),
        (["--split", "test=1.5"], "--split test=1.5: a fraction must be between 0 and 1"),
        (["--split", "test"], "--split test: expected NAME=COUNT or NAME=FRACTION"),
        (["--split", "test=5", "--split", "test=6"], "--split test is given twice"),
        (["--split", "test=5", "--test", str(FAULTS_TEST)], "--test FILE and --split test=5"),
        (["--test", "nope.jsonl"], "--test nope.jsonl: no such file"),
    ],
)
def test_bad_flags_are_one_line_errors(ftc, args, message):
    result = ftc("datasets", "add", "x", str(FAULTS_TEXT_ANSWER), *args, ok=False)
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert line.startswith(f"Error: {message}")
    assert listing(ftc) == []


def test_unknown_format_is_a_usage_error(ftc):
    result = ftc("datasets", "add", "x", str(FAULTS_TEXT_ANSWER), "--format", "csv", ok=False)
    assert result.exit_code == 2 and "'csv' is not one of" in result.output


def test_unknown_dataset_errors(ftc):
    ftc("datasets", "add", "fta", str(FAULTS_TEXT_ANSWER))
    for command in (["show", "nope"], ["rm", "nope", "--yes"], ["show", "fta:3"]):
        result = ftc("datasets", *command, ok=False)
        assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert "unknown dataset 'nope' (known: fta)" in ftc("datasets", "show", "nope", ok=False).output
    assert "dataset fta has no version 3 (versions: 1)" in ftc("datasets", "show", "fta:3", ok=False).output


def test_rm_asks_unless_yes(ftc):
    ftc("datasets", "add", "fta", str(FAULTS_TEXT_ANSWER))
    no = ftc("datasets", "rm", "fta", input="n\n", ok=False)
    assert no.exit_code == 1 and "Remove dataset fta:1 (10 rows (train 10))?" in no.output
    assert len(listing(ftc)) == 1
    assert "Removed fta:1" in ftc("datasets", "rm", "fta", input="y\n").output
    assert listing(ftc) == []


def test_commands_need_an_initialised_catalog(ft):
    result = ft("datasets", "list", ok=False)
    assert result.exit_code != 0 and "ft init" in result.output


@pytest.mark.parametrize("command", ["add", "list", "show", "rm"])
def test_every_command_has_help_with_an_example(ft, command):
    out = ft("datasets", command, "--help").output
    assert "Example:\n" in out and "ft datasets " + command in out
