"""The shipped sample data set: well-formed triple rows, learnable, original, and found by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog.errors import InvalidInput
from datasets_prep.samples import sample_path
from datasets_prep.templates import TRIPLES_INSTRUCTION
from tests.conftest import FAULTS_TEST, FAULTS_TEXT_ANSWER, FAULTS_TRAIN
from worker.evaluation.metrics.triple_f1 import parse_triples

RELATIONS = {"部件故障", "性能故障", "组成", "检测工具"}
PACKAGED = Path(__file__).resolve().parents[2] / "datasets_prep" / "samples" / "faults_sample.jsonl"


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    lines = sample_path("faults_sample").read_bytes().decode("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_sample_path_resolves_to_the_packaged_file():
    path = sample_path("faults_sample")
    assert path == PACKAGED.resolve()
    assert path.is_file()


def test_unknown_sample_names_the_shipped_ones():
    with pytest.raises(InvalidInput, match="faults_sample"):
        sample_path("nope")
    with pytest.raises(InvalidInput):
        sample_path("../samples/faults_sample")


def test_rows_parse_and_have_the_three_keys(rows):
    assert 40 <= len(rows) <= 60
    for row in rows:
        assert set(row) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) and v for v in row.values())
        assert row["instruction"] == TRIPLES_INSTRUCTION
        assert 40 <= len(row["input"]) <= 150


def test_no_duplicates(rows):
    assert len({row["input"] for row in rows}) == len(rows)
    for row in rows:
        lines = row["output"].split("\n")
        assert len(set(lines)) == len(lines)


def test_every_triple_is_well_formed_and_learnable(rows):
    seen = set()
    for row in rows:
        lines = row["output"].split("\n")
        assert 1 <= len(lines) <= 4
        for line in lines:
            parts = line.split("_")
            assert len(parts) == 3, line
            head, relation, tail = parts
            assert relation in RELATIONS, line
            assert head and tail and head == head.strip() and tail == tail.strip(), line
            assert head in row["input"] and tail in row["input"], line
            seen.add(relation)
        assert len(parse_triples(row["output"])) == len(lines)
    assert seen == RELATIONS
    per_relation = [line.split("_")[1] for row in rows for line in row["output"].split("\n")]
    assert per_relation.count("部件故障") > len(per_relation) / 2


def test_instruction_matches_the_real_data():
    if not FAULTS_TRAIN.is_file():
        pytest.skip(f"{FAULTS_TRAIN} not available")
    with FAULTS_TRAIN.open(encoding="utf-8") as f:
        assert {json.loads(line)["instruction"] for line in f} == {TRIPLES_INSTRUCTION}


def test_no_row_is_copied_from_the_real_data(rows):
    paths = [p for p in (FAULTS_TRAIN, FAULTS_TEST) if p.is_file()]
    if not paths:
        pytest.skip("the real fault-triple data is not available")
    real_rows, real_inputs = [], set()
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for line in f:
                real = json.loads(line)
                real_rows.append(real)
                real_inputs.add(real["input"])
    if FAULTS_TEXT_ANSWER.is_file():
        with FAULTS_TEXT_ANSWER.open(encoding="utf-8") as f:
            real_inputs |= {json.loads(line)["text"] for line in f}
    for row in rows:
        assert row not in real_rows
        assert row["input"] not in real_inputs
