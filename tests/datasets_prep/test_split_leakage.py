"""`--split` parts carved from one file never share a prompt: rows whose prompts are the same once
normalised (case, width, whitespace) land in one part, and the registration report says so with a
`split-kept-together` warning naming the rows' lines."""

from __future__ import annotations

import json

import pytest

from catalog.errors import InvalidInput
from datasets_prep.canonical import load_split
from datasets_prep.register import add_dataset
from datasets_prep.split import assign, assign_groups, normalise, prompt_groups, write_splits


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _d2q_rows():
    """60 passages; passages 0-9 come back 2-4 times (same text, another case or spacing, another
    answer), as a scraped question-generation set does."""
    rows = [{"text": f"Passage number {i} about topic {i % 7}.", "answer": f"q{i}"} for i in range(60)]
    for i in range(10):
        for k in range(1 + i % 3):
            rows.append({"text": f"  PASSAGE   number {i} about topic {i % 7}.  ", "answer": f"q{i}-{k}"})
    return rows


def test_normalise_folds_case_width_and_spaces():
    assert normalise("  Ａbc\tDEF \n g ") == "abc def g"
    assert normalise("故障") == "故障"


def test_registered_splits_share_no_prompt_and_the_report_says_which_were_kept_together(
    tmp_path, catalog, store
):
    path = _write(tmp_path / "d2q.jsonl", _d2q_rows())
    result = add_dataset(
        catalog, store, "d2q", path, "columns", prompt_key="text", response_key="answer",
        splits={"test": 15, "val": 5}, seed=3, user="t",
    )  # fmt: skip
    ds = result.dataset
    parts = {split: [r.input for r in load_split(store, ds, split)] for split in ds.split_counts}
    assert sum(len(rows) for rows in parts.values()) == 79 == sum(ds.split_counts.values())
    assert {split: len(rows) for split, rows in parts.items()} == ds.split_counts
    assert ds.split_counts["test"] == 15 and ds.split_counts["val"] == 5  # singletons fill exactly
    owners: dict[str, set[str]] = {}
    for split, rows in parts.items():
        for text in rows:
            owners.setdefault(normalise(text), set()).add(split)
    assert len(owners) == 60 and all(len(where) == 1 for where in owners.values()), owners

    kept = [line for line in ds.report if ": split-kept-together: " in line]
    assert len(kept) == 10  # one per repeated passage
    assert ds.invalid_count == 0  # a warning, not an error
    first = next(line for line in kept if line.startswith(f"{path}:1: "))
    assert "2 rows share this prompt (lines 1, 61)" in first and "none in another split" in first
    sizes = {int(line.split(": split-kept-together: ")[1].split()[0]) for line in kept}
    assert sizes == {2, 3, 4}
    assert "10 warnings (the rows are kept): split-kept-together 10" in result.shown


def test_the_cli_shows_the_warning(tmp_path, ft):
    ft("init")
    path = _write(tmp_path / "d2q.jsonl", _d2q_rows())
    out = ft(
        "datasets", "add", "d2q", str(path), "--format", "columns", "--prompt-key", "text",
        "--response-key", "answer", "--split", "test=10",
    )  # fmt: skip
    assert "split-kept-together 10" in out.output
    assert "split-kept-together: 2 rows share this prompt" in out.output


def test_without_repeats_the_draw_is_the_plain_one(tmp_path):
    rows = tmp_path / "rows.tmp"
    _write(rows, [{"instruction": "", "input": str(i), "output": "o"} for i in range(50)])
    split = write_splits(rows, tmp_path, {"train": 40, "test": 10}, seed=3)
    assert split.counts == {"train": 40, "test": 10} and split.together == []
    test = [int(json.loads(line)["input"]) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert set(test) == {i for i, name in assign(50, {"train": 40, "test": 10}, 3).items() if name == "test"}


def test_groups_stay_whole_and_train_keeps_a_row(tmp_path):
    rows = tmp_path / "rows.tmp"
    lines = [{"instruction": "", "input": f"p{i // 3}", "output": str(i)} for i in range(12)]  # 4 groups of 3
    _write(rows, lines)
    groups = prompt_groups(rows)
    assert groups == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    where = assign_groups(groups, {"train": 10, "test": 2}, seed=0)
    assert len(where) == 3 and len({i // 3 for i in where}) == 1  # one whole group, not an empty split
    assert where == assign_groups(groups, {"train": 10, "test": 2}, seed=0)
    with pytest.raises(InvalidInput, match="leaves no row for train"):
        assign_groups([[0, 1, 2]], {"train": 2, "test": 1}, seed=0)
