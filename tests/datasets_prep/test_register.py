"""Registration against a real catalog and store: the real data files, versions and identical
content, refusals that change nothing, --skip-invalid reports, lookups, removal, streaming."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import pytest
from sqlalchemy import func, select

from catalog.datasets import get_dataset, list_datasets, remove_dataset
from catalog.errors import Conflict, InvalidInput, NotFound
from catalog.models import BaseModel, Conversion, Dataset, PromptTemplate
from datasets_prep.canonical import META, load_split
from datasets_prep.register import add_dataset
from datasets_prep.rows import Row
from datasets_prep.validate import InvalidRows
from tests.conftest import ADGEN_DEV, FAULTS_TEST, FAULTS_TEXT_ANSWER, FAULTS_TRAIN


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def rows_of(n: int, prefix: str = "r") -> list[dict]:
    return [{"instruction": "Q", "input": f"{prefix}{i}", "output": f"a{i}"} for i in range(n)]


def store_files(store) -> list[str]:
    """Every file in the store (the empty `.staging` directory left by a refused add is no file)."""
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def dataset_count(catalog) -> int:
    with catalog.session() as s:
        return s.scalar(select(func.count()).select_from(Dataset))


# ---------------------------------------------------------------- the real data


def test_faults_train_with_test_file(catalog, store):
    result = add_dataset(
        catalog, store, "faults", FAULTS_TRAIN, "triples", test_path=FAULTS_TEST, user="tester"
    )
    ds = result.dataset
    assert result.created and result.report == []
    assert (ds.name, ds.version, ds.source_format, ds.created_by) == ("faults", 1, "triples", "tester")
    assert ds.split_counts == {"train": 120, "test": 50}
    assert ds.source_sha256 == hashlib.sha256(FAULTS_TRAIN.read_bytes()).hexdigest()
    assert ds.split_spec["test_file"]["sha256"] == hashlib.sha256(FAULTS_TEST.read_bytes()).hexdigest()
    assert ds.source_path == str(FAULTS_TRAIN.resolve())
    assert ds.invalid_count == 0 and ds.report == []
    assert store.verify(ds.artifact_uri) == [] and ds.artifact_uri == f"datasets/{ds.sha256}"
    with open(FAULTS_TRAIN, encoding="utf-8") as f:
        first = json.loads(f.readline())
    train = list(load_split(store, ds, "train"))
    assert len(train) == 120 and train[0] == Row(**first)  # no split: file order kept
    assert len(list(load_split(store, ds, "test"))) == 50
    meta = json.loads((store.path(ds.artifact_uri) / META).read_text())
    assert meta == {"format": "triples", "counts": {"train": 120, "test": 50}, "splits": {}, "seed": None}


def test_adgen_dev_split_20_for_test(catalog, store):
    result = add_dataset(catalog, store, "adgen", ADGEN_DEV, "adgen", splits={"test": 20}, seed=0, user="t")
    ds = result.dataset
    assert ds.split_counts == {"train": 100, "test": 20}
    # the dev set holds one exact duplicate (lines 889 and 890): kept, and reported as a warning
    assert result.report[0] == f"{ADGEN_DEV}:120: duplicate-row: same row as an earlier one (kept)"
    # ads written for the same keywords (lines 66-67, 77-79, 119-120) stay in one split: no leakage
    assert [line.split(": ")[0:2] for line in result.report[1:]] == [
        [f"{ADGEN_DEV}:{n}", "split-kept-together"] for n in (66, 77, 119)
    ]
    assert ds.report == result.report and ds.invalid_count == 0
    test = list(load_split(store, ds, "test"))
    assert all(r.instruction == "" and r.input.startswith("类型#") for r in test)
    meta = json.loads((store.path(ds.artifact_uri) / META).read_text())
    assert meta["seed"] == 0 and meta["splits"] == {"test": 20}


def test_text_answer_file_and_auto_detection(catalog, store):
    ds = add_dataset(catalog, store, "fta", FAULTS_TEXT_ANSWER, user="t").dataset  # fmt defaults to auto
    assert ds.source_format == "triples" and ds.split_counts == {"train": 10}
    assert next(iter(load_split(store, ds, "train"))).instruction == ""


def test_community_json_array_files_via_auto(tmp_path, catalog, store):
    alpaca = [
        {
            "instruction": "Add.",
            "input": "1+1",
            "output": "2",
            "system": "Be exact.",
            "history": [["hi", "hello"]],
        },
        {"instruction": "Say hi.", "output": "hi"},
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(alpaca, indent=2), encoding="utf-8")
    ds = add_dataset(catalog, store, "al", tmp_path / "alpaca.json", user="t").dataset
    assert ds.source_format == "alpaca"
    assert list(load_split(store, ds, "train")) == [
        Row("Add.", "1+1", "2", system="Be exact.", history=(("hi", "hello"),)),
        Row("Say hi.", "", "hi"),
    ]
    chats = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(10)
    ]
    chats[4]["messages"].pop()  # ends with the user: reported at its line of the array
    (tmp_path / "chats.json").write_text(json.dumps(chats, indent=1), encoding="utf-8")
    with pytest.raises(InvalidRows) as info:
        add_dataset(catalog, store, "chat", tmp_path / "chats.json", user="t")
    line = 2 + 4 * 12  # "[" on line 1, then 12 lines per conversation
    assert info.value.report == [
        f"{tmp_path / 'chats.json'}:{line}: bad-turns: 'messages' must end with an assistant turn"
    ]
    result = add_dataset(
        catalog, store, "chat", tmp_path / "chats.json", splits={"test": 3}, skip_invalid=True, user="t"
    )
    assert result.dataset.source_format == "sharegpt" and result.dataset.split_counts == {
        "train": 6,
        "test": 3,
    }


# ---------------------------------------------------------------- versions


def test_identical_content_is_recognised_and_changed_content_makes_a_new_version(tmp_path, catalog, store):
    path = write_jsonl(tmp_path / "d.jsonl", rows_of(5))
    first = add_dataset(catalog, store, "d", path, "triples", user="t")
    files = store_files(store)
    again = add_dataset(catalog, store, "d", path, "triples", user="t")
    assert not again.created and again.dataset.id == first.dataset.id and again.dataset.version == 1
    assert store_files(store) == files and dataset_count(catalog) == 1

    # the same rows from a differently written file are the same canonical content
    (tmp_path / "e.jsonl").write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n\n"))
    assert not add_dataset(catalog, store, "d", tmp_path / "e.jsonl", "triples", user="t").created

    write_jsonl(path, rows_of(6))
    changed = add_dataset(catalog, store, "d", path, "triples", user="t")
    assert changed.created and changed.dataset.version == 2
    assert changed.dataset.sha256 != first.dataset.sha256
    # a different split of the same rows is different content too
    split = add_dataset(catalog, store, "d", path, "triples", splits={"test": 2}, user="t")
    assert split.created and split.dataset.version == 3
    # only the latest version counts: going back to v1's content makes v4
    write_jsonl(path, rows_of(5))
    assert add_dataset(catalog, store, "d", path, "triples", user="t").dataset.version == 4


# ---------------------------------------------------------------- refusals


def test_bad_rows_refuse_the_file_and_change_nothing(tmp_path, catalog, store):
    add_dataset(catalog, store, "keep", write_jsonl(tmp_path / "ok.jsonl", rows_of(3)), "triples", user="t")
    files, count = store_files(store), dataset_count(catalog)
    bad = write_jsonl(tmp_path / "bad.jsonl", [*rows_of(3, "x"), "{oops", {"instruction": "i"}, "[]"])
    with pytest.raises(InvalidRows) as info:
        add_dataset(catalog, store, "bad", bad, "triples", user="t")
    assert [line.split(": ")[:2] for line in info.value.report] == [
        [f"{bad}:4", "invalid-json"],
        [f"{bad}:5", "missing-field"],
        [f"{bad}:6", "not-object"],
    ]
    assert "3 invalid rows" in info.value.summary
    assert store_files(store) == files and dataset_count(catalog) == count
    assert list(store.staging_root.iterdir()) == []


def test_a_bad_test_file_refuses_too(tmp_path, catalog, store):
    train = write_jsonl(tmp_path / "train.jsonl", rows_of(5))
    test = write_jsonl(tmp_path / "test.jsonl", ["nope", *rows_of(2, "t")])
    with pytest.raises(InvalidRows) as info:
        add_dataset(catalog, store, "d", train, "triples", test_path=test, user="t")
    assert info.value.report == [f"{test}:1: invalid-json: Expecting value at column 1"]
    assert store_files(store) == [] and dataset_count(catalog) == 0


def test_skip_invalid_registers_the_rest_and_stores_the_report(tmp_path, catalog, store):
    path = write_jsonl(
        tmp_path / "d.jsonl", [*rows_of(4), "{oops", {"instruction": "i", "input": "", "output": "o"}]
    )
    result = add_dataset(catalog, store, "d", path, "triples", skip_invalid=True, user="t")
    ds = result.dataset
    assert ds.split_counts == {"train": 4} and ds.invalid_count == 2
    assert (
        ds.report
        == result.report
        == [
            f"{path}:5: invalid-json: Expecting property name enclosed in double quotes at column 2",
            f"{path}:6: empty-field: field 'input' is empty",
        ]
    )
    with catalog.session() as s:
        assert get_dataset(s, "d").report == ds.report


def test_no_valid_rows_is_refused(tmp_path, catalog, store):
    path = write_jsonl(tmp_path / "d.jsonl", ["x", "y"])
    with pytest.raises(InvalidRows, match="has no valid rows"):
        add_dataset(catalog, store, "d", path, "triples", skip_invalid=True, user="t")
    assert dataset_count(catalog) == 0 and store_files(store) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a/b"}, "invalid dataset name 'a/b'"),
        ({"path": "missing.jsonl"}, "FILE missing.jsonl: no such file"),
        ({"test_path": "nope.jsonl"}, "--test nope.jsonl: no such file"),
        ({"fmt": "csv"}, "unknown format 'csv'"),
        ({"splits": {"test": 2000}}, "--split test=2000: asks for 2000 rows"),
        ({"splits": {"test": 5}, "test_path": str(FAULTS_TEST)}, "--test FILE and --split test=5"),
        ({"splits": {"test": 1.5}}, "--split test=1.5: a fraction must be between 0 and 1"),
        ({"seed": "x"}, "--seed 'x': expected an integer"),
    ],
)
def test_bad_arguments_are_clear_errors_and_change_nothing(catalog, store, kwargs, message):
    args = {"name": "d", "path": str(FAULTS_TEXT_ANSWER), "fmt": "triples", **kwargs}
    with pytest.raises(InvalidInput) as info:
        add_dataset(catalog, store, args.pop("name"), args.pop("path"), args.pop("fmt"), user="t", **args)
    assert message in str(info.value)
    assert dataset_count(catalog) == 0 and store_files(store) == []


# ---------------------------------------------------------------- lookups and removal


def test_get_and_list_versions(tmp_path, catalog, store):
    path = write_jsonl(tmp_path / "d.jsonl", rows_of(3))
    add_dataset(catalog, store, "b", path, "triples", user="t")
    write_jsonl(path, rows_of(4))
    add_dataset(catalog, store, "b", path, "triples", user="t")
    add_dataset(catalog, store, "a", path, "triples", user="t")
    with catalog.session() as s:
        assert get_dataset(s, "b").version == 2 and get_dataset(s, "b:1").total_rows == 3
        assert [d.ref for d in list_datasets(s)] == ["a:1", "b:2"]
        assert [d.ref for d in list_datasets(s, all_versions=True)] == ["a:1", "b:1", "b:2"]
        with pytest.raises(NotFound, match=r"unknown dataset 'zz' \(known: a, b\)"):
            get_dataset(s, "zz")
        with pytest.raises(NotFound, match=r"dataset b has no version 9 \(versions: 1, 2\)"):
            get_dataset(s, "b:9")
        with pytest.raises(InvalidInput, match="expected NAME or NAME:VERSION"):
            get_dataset(s, "b:x")


def test_remove_keeps_an_artifact_that_another_version_shares(tmp_path, catalog, store):
    path = write_jsonl(tmp_path / "d.jsonl", rows_of(3))
    one = add_dataset(catalog, store, "one", path, "triples", user="t").dataset
    two = add_dataset(catalog, store, "two", path, "triples", user="t").dataset
    assert one.artifact_uri == two.artifact_uri
    assert remove_dataset(catalog, store, "one").ref == "one:1"
    assert store.exists(two.artifact_uri)
    remove_dataset(catalog, store, "two:1")
    assert not store.exists(two.artifact_uri) and dataset_count(catalog) == 0
    with pytest.raises(NotFound):
        remove_dataset(catalog, store, "two")


def test_remove_is_refused_while_a_conversion_uses_the_version(tmp_path, catalog, store):
    ds = add_dataset(catalog, store, "d", write_jsonl(tmp_path / "d.jsonl", rows_of(3)), "triples", user="t")
    with catalog.session() as s:
        model = BaseModel(name="m", source="path", uri="/models/m", created_by="t")
        template = s.scalars(select(PromptTemplate).where(PromptTemplate.name == "plain")).one()
        s.add(model)
        s.flush()
        s.add(
            Conversion(
                cache_key="k" * 64,
                dataset_id=ds.dataset.id,
                template_id=template.id,
                base_model_id=model.id,
                tokenizer_sha256="0" * 64,
                max_len=512,
                artifact_uri="conversions/x",
                sha256="1" * 64,
                stats={},
                created_by="t",
            )
        )
    with pytest.raises(Conflict, match=r"dataset d:1 is used by conversion \d+; remove those first"):
        remove_dataset(catalog, store, "d")
    assert dataset_count(catalog) == 1 and store.exists(ds.dataset.artifact_uri)


# ---------------------------------------------------------------- streaming


def test_memory_does_not_grow_with_the_file(tmp_path, catalog, store):
    """A 20 MB file is registered with a few MB of Python memory (rows are streamed, not held)."""
    path = tmp_path / "big.jsonl"
    filler = "故障" * 500  # 3 KB of UTF-8 per row
    with open(path, "w", encoding="utf-8") as f:
        for i in range(7000):
            f.write(json.dumps({"text": f"{i} {filler}", "answer": f"a{i}"}, ensure_ascii=False) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        ds = add_dataset(catalog, store, "big", path, "triples", splits={"test": 0.1}, user="t").dataset
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.split_counts == {"train": 6300, "test": 700}
    assert size > 20_000_000 and peak < 6_000_000, f"peak {peak} for a file of {size} bytes"
