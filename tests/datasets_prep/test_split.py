"""Splits: parsing `--split`, refusing impossible requests (naming the flag), seeded and
deterministic selection, and split files that partition the rows in file order."""

from __future__ import annotations

import json

import pytest

from catalog.errors import InvalidInput
from datasets_prep.canonical import iter_rows, load_split
from datasets_prep.register import add_dataset
from datasets_prep.split import assign, check_splits, parse_split, split_counts, write_splits


def test_parse_split_counts_and_fractions():
    assert parse_split("test=50") == ("test", 50)
    assert parse_split("val=0.1") == ("val", 0.1)
    assert isinstance(parse_split("test=50")[1], int) and isinstance(parse_split("t=0.5")[1], float)
    for bad in ("test", "test=", "=5", "test=ten"):
        with pytest.raises(InvalidInput, match=f"--split {bad}: expected NAME=COUNT or NAME=FRACTION"):
            parse_split(bad)


@pytest.mark.parametrize(
    ("splits", "test_file", "message"),
    [
        ({"test": 0}, False, "--split test=0: a row count must be at least 1"),
        ({"test": -3}, False, "--split test=-3: a row count must be at least 1"),
        ({"test": 1.5}, False, "--split test=1.5: a fraction must be between 0 and 1"),
        ({"test": 1.0}, False, "--split test=1.0: a fraction must be between 0 and 1"),
        ({"test": 0.0}, False, "--split test=0.0: a fraction must be between 0 and 1"),
        ({"test": True}, False, "--split test=True: expected a row count or a fraction"),
        ({"train": 5}, False, "--split train=5: train is what the other splits leave"),
        ({"test": 5}, True, "--test FILE and --split test=5 both define the test split"),
        ({"a/b": 5}, False, "invalid split name in --split a/b=5"),
    ],
)
def test_impossible_split_requests_name_the_flag(splits, test_file, message):
    with pytest.raises(InvalidInput) as info:
        check_splits(splits, test_file=test_file)
    assert message in str(info.value)


def test_check_splits_sorts_by_name_and_allows_other_splits_with_a_test_file():
    assert list(check_splits({"val": 0.1, "dev": 3}, test_file=True)) == ["dev", "val"]
    assert check_splits(None, test_file=False) == {}


def test_split_counts_from_counts_and_fractions():
    assert split_counts({"test": 100}, 1070, "f") == {"train": 970, "test": 100}
    assert split_counts({"test": 0.1}, 1070, "f") == {"train": 963, "test": 107}
    assert split_counts({"val": 0.05, "test": 10}, 100, "f") == {"train": 85, "test": 10, "val": 5}
    assert split_counts({}, 7, "f") == {"train": 7}


def test_split_counts_refuses_more_rows_than_there_are():
    with pytest.raises(InvalidInput, match=r"--split test=2000: asks for 2000 rows but f.jsonl has 1070"):
        split_counts({"test": 2000}, 1070, "f.jsonl")
    with pytest.raises(InvalidInput, match="leave at least one for train"):
        split_counts({"test": 5, "val": 5}, 10, "f.jsonl")
    with pytest.raises(InvalidInput, match=r"--split test=0.01 selects no row of the 20 valid rows"):
        split_counts({"test": 0.01}, 20, "f.jsonl")


def test_assign_is_seeded_and_deterministic():
    counts = {"train": 900, "test": 100, "val": 70}
    first = assign(1070, counts, seed=0)
    assert first == assign(1070, counts, seed=0)
    assert first != assign(1070, counts, seed=1)
    assert sorted(first.values()).count("test") == 100 and list(first.values()).count("val") == 70
    assert all(0 <= i < 1070 for i in first)


def test_write_splits_partitions_the_rows_in_file_order(tmp_path):
    rows = tmp_path / "rows.tmp"
    rows.write_text("".join(json.dumps({"input": str(i), "output": "o"}) + "\n" for i in range(50)))
    write_splits(rows, tmp_path, {"train": 40, "test": 10}, seed=3)
    assert not rows.exists()
    train = [int(r.input) for r in iter_rows(tmp_path / "train.jsonl")]
    test = [int(r.input) for r in iter_rows(tmp_path / "test.jsonl")]
    assert len(train) == 40 and len(test) == 10
    assert sorted(train + test) == list(range(50))
    assert train == sorted(train) and test == sorted(test)
    assert set(test) == {i for i, name in assign(50, {"train": 40, "test": 10}, 3).items() if name == "test"}


def _inputs(store, dataset, split):
    return [row.input for row in load_split(store, dataset, split)]


def test_same_file_and_seed_give_the_same_rows_on_every_run(tmp_path, catalog, store):
    from tests.conftest import ADGEN_DEV

    a = add_dataset(catalog, store, "a", ADGEN_DEV, "adgen", splits={"test": 20}, seed=0, user="t").dataset
    b = add_dataset(catalog, store, "b", ADGEN_DEV, "adgen", splits={"test": 20}, seed=0, user="t").dataset
    c = add_dataset(catalog, store, "c", ADGEN_DEV, "adgen", splits={"test": 20}, seed=1, user="t").dataset
    assert a.split_counts == {"train": 100, "test": 20}
    assert a.sha256 == b.sha256 and a.artifact_uri == b.artifact_uri
    assert _inputs(store, a, "test") == _inputs(store, b, "test")
    assert _inputs(store, a, "test") != _inputs(store, c, "test")
    assert c.split_counts == a.split_counts


def test_several_named_splits_and_a_fraction(tmp_path, catalog, store):
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "answer": "a"}) + "\n" for i in range(200)))
    ds = add_dataset(catalog, store, "f", path, "triples", splits={"val": 0.1, "test": 30}, seed=7, user="t")
    counts = ds.dataset.split_counts
    assert counts == {"train": 150, "test": 30, "val": 20}
    seen = [x for split in counts for x in _inputs(store, ds.dataset, split)]
    assert sorted(seen) == sorted(f"t{i}" for i in range(200))
    assert ds.dataset.split_spec["splits"] == {"test": 30, "val": 0.1} and ds.dataset.split_spec["seed"] == 7
