"""Conversion end to end on the real fault-triples test set with the tiny model: spec resolution and
validation, the cache key, the Arrow artifact (loaded by `datasets`), stats, progress, registration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from datasets import Dataset as HFDataset
from sqlalchemy import func, select

from catalog.base_models import get_base_model
from catalog.conversions import find_conversion
from catalog.errors import InvalidInput, NotFound
from catalog.models import BaseModel, Dataset, PromptTemplate
from catalog.templates import get_template
from datasets_prep.canonical import split_file, write_rows
from datasets_prep.convert import (
    BuiltConversion,
    build_conversion,
    load_tokenized,
    register_conversion,
    resolve_convert_spec,
)
from datasets_prep.rows import Row
from datasets_prep.spec import ConvertSpec
from datasets_prep.tokenize import IGNORE_INDEX, SplitStats, tokenize_batch
from tests.conftest import FAULTS_TEST
from worker.models.directories import tokenizer_of as load_tokenizer
from worker.models.registration import register_path


def make_dataset(catalog, store, name: str, source: Path, splits: dict[str, slice]) -> Dataset:
    """Register `source` as a dataset version directly (canonical artifact + row)."""
    with open(source, encoding="utf-8") as f:
        rows = [Row.from_json(json.loads(line)) for line in f if line.strip()]
    with store.staging() as d:
        counts = {split: write_rows(split_file(d, split), rows[part]) for split, part in splits.items()}
        artifact = store.commit(d, "datasets")
    with catalog.session() as s:
        latest = s.scalar(select(func.max(Dataset.version)).where(Dataset.name == name)) or 0
        ds = Dataset(
            name=name,
            version=latest + 1,
            source_format="instruction",
            source_path=str(source),
            source_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            artifact_uri=artifact.uri,
            sha256=artifact.sha256,
            split_counts=counts,
            split_spec={"test": 10},
            created_by="tester",
        )
        s.add(ds)
    return ds


@pytest.fixture
def faults(catalog, store, tiny_model_dir):
    """The 50 real test rows as `faults:1` (train 40 / test 10) and the tiny model as `tiny`."""
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
    return make_dataset(catalog, store, "faults", FAULTS_TEST, {"train": slice(0, 40), "test": slice(40, 50)})


def _resolve(catalog, **kw) -> ConvertSpec:
    args = {"dataset": "faults", "model": "tiny", "template": "plain"} | kw
    with catalog.session() as s:
        return resolve_convert_spec(s, **args)


def _build(catalog, store, spec, report=None) -> BuiltConversion:
    with catalog.session() as s:
        ds = s.get(Dataset, spec.dataset_id)
        tpl = s.get(PromptTemplate, spec.template_id)
        tok = load_tokenizer(store, s.get(BaseModel, spec.base_model_id))
    return build_conversion(store, spec, ds, tpl, tok, report=report)


def test_resolve_spec_and_cache_key(catalog, store, faults):
    spec = _resolve(catalog)
    assert (spec.dataset_ref, spec.template_ref, spec.model_name) == ("faults:1", "plain:1", "tiny")
    assert (spec.max_len, spec.max_source_len) == (2048, 1536)  # one --max-len default; 3/4 for the prompt
    assert len(spec.cache_key) == 64 and spec.tokenizer_sha256
    assert _resolve(catalog, dataset="faults:1").cache_key == spec.cache_key  # stable
    assert ConvertSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    others = {
        _resolve(catalog, max_len=512).cache_key,
        _resolve(catalog, max_source_len=256).cache_key,
        _resolve(catalog, template="alpaca").cache_key,
        _resolve(catalog, template="triples-zh").cache_key,
    }
    assert spec.cache_key not in others and len(others) == 4
    make_dataset(catalog, store, "faults", FAULTS_TEST, {"train": slice(0, 45), "test": slice(45, 50)})
    newer = _resolve(catalog)
    assert newer.dataset_ref == "faults:2" and newer.cache_key != spec.cache_key


def test_resolve_errors(catalog, faults):
    with pytest.raises(NotFound, match=r"unknown dataset 'nope' \(known: faults\)"):
        _resolve(catalog, dataset="nope")
    with pytest.raises(NotFound, match=r"dataset faults has no version 7 \(versions: 1\)"):
        _resolve(catalog, dataset="faults:7")
    with pytest.raises(NotFound, match=r"unknown base model 'gpt' \(known: tiny\)"):
        _resolve(catalog, model="gpt")
    with pytest.raises(NotFound, match="unknown template 'nope'"):
        _resolve(catalog, template="nope")
    with pytest.raises(InvalidInput, match="--max-len must be between 2"):
        _resolve(catalog, max_len=1)
    with pytest.raises(InvalidInput, match="--max-source-len must be at least 1 and less than --max-len"):
        _resolve(catalog, max_len=128, max_source_len=128)
    with pytest.raises(InvalidInput, match="--max-len must be a whole number"):
        ConvertSpec(dataset_id=1, template_id=1, base_model_id=1, max_len="1024")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match='conversion spec: can not match "epochs"'):
        ConvertSpec.from_json({"dataset_id": 1, "template_id": 1, "base_model_id": 1, "epochs": 3})


def test_build_register_and_load(catalog, store, faults, tiny_model_dir):
    spec = _resolve(catalog, template="alpaca", max_len=256, max_source_len=128)
    with catalog.session() as s:
        assert find_conversion(s, spec.cache_key) is None
    reports: list[dict] = []
    built = _build(catalog, store, spec, report=reports.append)

    root = store.path(built.artifact.uri)
    assert built.artifact.uri.startswith("conversions/") and store.verify(built.artifact.uri) == []
    assert sorted(p.name for p in root.iterdir()) == [
        "MANIFEST.json",
        "stats.json",
        "test.arrow",
        "train.arrow",
    ]
    on_disk = json.loads((root / "stats.json").read_text())
    assert on_disk["splits"] == built.stats and on_disk["cache_key"] == spec.cache_key
    assert reports[-1] == {"stage": "done", "rows_done": 50, "rows_total": 50}

    for split, total in (("train", 40), ("test", 10)):
        st = built.stats[split]
        assert st["rows"] + st["dropped"] == total
        assert st["prompt_truncated"] > 0  # real inputs run to ~1,750 characters
        assert st["max_length"] <= 256
        hf = HFDataset.from_file(str(root / f"{split}.arrow"))
        assert hf.column_names == ["input_ids", "labels"] and len(hf) == st["rows"]
        lengths = [len(ids) for ids in hf["input_ids"]]
        assert lengths == [len(labels) for labels in hf["labels"]]
        assert sum(lengths) == st["tokens"] and max(lengths) == st["max_length"]
        assert st["mean_length"] == round(sum(lengths) / len(lengths), 2)

    # the stored rows are exactly what the tokeniser gives for the canonical rows
    tok = load_tokenizer(store, _registered(catalog, "tiny"))
    with open(FAULTS_TEST, encoding="utf-8") as f:
        test_rows = [Row.from_json(json.loads(line)) for line in f][40:]
    expect = tokenize_batch(
        test_rows, tok, "jinja", get_body(catalog, "alpaca"), max_len=256, max_source_len=128
    )
    hf = HFDataset.from_file(str(root / "test.arrow"))
    assert hf["input_ids"] == expect["input_ids"] and hf["labels"] == expect["labels"]
    for ids, labels in zip(hf["input_ids"], hf["labels"], strict=True):
        masked = labels.count(IGNORE_INDEX)
        assert (
            0 < masked <= 128
            and labels[:masked] == [IGNORE_INDEX] * masked
            and labels[masked:] == ids[masked:]
        )

    with catalog.session() as s:
        conv = register_conversion(s, spec, built, job_id=None, user="tester")
        conv_id = conv.id
    with catalog.session() as s:
        conv = find_conversion(s, spec.cache_key)
        assert conv is not None and conv.id == conv_id
        assert (conv.max_len, conv.max_source_len, conv.artifact_uri) == (256, 128, built.artifact.uri)
        assert conv.stats == built.stats and conv.sha256 == built.artifact.sha256
        again = register_conversion(s, spec, built, job_id=None, user="tester")
        assert again.id == conv_id  # one row per cache key
        loaded = load_tokenized(store, conv, "test")
        assert len(loaded) == built.stats["test"]["rows"] and loaded["input_ids"] == hf["input_ids"]
        with pytest.raises(NotFound, match="has no split 'validation'"):
            load_tokenized(store, conv, "validation")


def test_whole_examples_without_truncation(catalog, store, faults):
    spec = _resolve(catalog, max_len=8192)
    built = _build(catalog, store, spec)
    for split, total in (("train", 40), ("test", 10)):
        st = built.stats[split]
        assert (st["rows"], st["dropped"], st["prompt_truncated"], st["output_truncated"]) == (total, 0, 0, 0)
    # identical content is stored once
    assert _build(catalog, store, spec).artifact == built.artifact


def test_tiny_max_len_drops_rows(catalog, store, faults):
    # without a prompt budget (a spec from before the 3/4 default) long prompts leave no answer token
    spec = dataclasses.replace(_resolve(catalog, max_len=16), max_source_len=None)
    built = _build(catalog, store, spec)
    for split, total in (("train", 40), ("test", 10)):
        assert built.stats[split]["dropped"] == total and built.stats[split]["rows"] == 0
        assert len(HFDataset.from_file(str(store.path(built.artifact.uri) / f"{split}.arrow"))) == 0
    assert SplitStats().to_json()["mean_length"] == 0.0


def _registered(catalog, name) -> BaseModel:
    with catalog.session() as s:
        return get_base_model(s, name)


def get_body(catalog, ref) -> str:
    with catalog.session() as s:
        return get_template(s, ref).body
