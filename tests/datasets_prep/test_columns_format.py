"""`--format columns --prompt-key K --response-key K`: any flat JSON rows, a missing key an invalid row
at FILE:LINE, the flags checked; through `add_dataset` and the real CLI."""

from __future__ import annotations

import json

import pytest

from catalog.errors import InvalidInput
from datasets_prep.formats import columns
from datasets_prep.reader import RowError
from datasets_prep.register import add_dataset
from datasets_prep.rows import Row
from datasets_prep.validate import InvalidRows


def test_columns_reads_the_named_fields_and_ignores_the_rest():
    fmt = columns.make("question", "reply")
    row = fmt.convert({"id": 7, "question": "q?", "reply": "r."})
    assert row == Row(instruction="", input="q?", output="r.")
    multi = fmt.convert({"question": "q?", "reply": ["r1", "r2"]})
    assert multi.output == "r1" and multi.references == ("r1", "r2")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"reply": "r"}, "no field 'question' (--prompt-key)"),
        ({"question": "q"}, "no field 'reply' (--response-key)"),
        ({}, "no field 'question' (--prompt-key) and no field 'reply' (--response-key)"),
    ],
)
def test_a_missing_key_is_a_missing_field(obj, message):
    with pytest.raises(RowError) as info:
        columns.make("question", "reply").convert(obj)
    assert (info.value.code, info.value.message) == ("missing-field", message)


def test_the_flags_are_checked():
    with pytest.raises(InvalidInput, match="--format columns needs --prompt-key KEY and --response-key KEY"):
        columns.make("q", None)
    with pytest.raises(InvalidInput, match="both 'q'"):
        columns.make("q", "q")


def test_add_dataset_with_columns_reports_file_and_line(tmp_path, catalog, store):
    path = tmp_path / "flat.jsonl"
    rows = [{"q": "a", "r": "b"}, {"q": "c"}, {"q": "e", "r": "f"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InvalidRows) as info:
        add_dataset(catalog, store, "flat", path, "columns", prompt_key="q", response_key="r", user="t")
    assert info.value.report == [
        f"{path}:2: missing-field: no field 'r' (--response-key) (columns rows look like "
        '{"q": prompt, "r": response})'
    ]
    ds = add_dataset(
        catalog, store, "flat", path, "columns", prompt_key="q", response_key="r", skip_invalid=True, user="t"
    ).dataset
    assert ds.source_format == "columns" and ds.split_counts == {"train": 2} and ds.invalid_count == 1
    with pytest.raises(InvalidInput, match="go with --format columns, not --format triples"):
        add_dataset(catalog, store, "flat", path, "triples", prompt_key="q", user="t")


def test_columns_through_the_cli(ft, tmp_path):
    ft("init")
    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps({"passage": "p", "question": "q"}) + "\n")
    out = ft(
        "datasets", "add", "flat", str(path), "--format", "columns", "--prompt-key", "passage",
        "--response-key", "question",
    ).output  # fmt: skip
    assert out.splitlines()[0] == "Registered flat:1 (columns): 1 rows (train 1)"
    missing = ft("datasets", "add", "flat", str(path), "--format", "columns", ok=False)
    assert missing.exit_code == 2
    assert missing.output.splitlines() == [
        "Error: --format columns needs --prompt-key KEY and --response-key KEY"
    ]
