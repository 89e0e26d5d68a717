"""Multi-reference outputs: a list of references is accepted (the first is trained on), stored with
the row, and `bleu-rouge-zh` scores against all of them (nltk multi-reference BLEU, best ROUGE)."""

from __future__ import annotations

import pytest

from datasets_prep.formats import get_format
from datasets_prep.reader import RowError
from datasets_prep.rows import Row
from worker.evaluation.metrics import get_metric
from worker.evaluation.metrics.bleu_rouge_zh import score_pair


def test_a_list_of_references_is_accepted_and_round_trips():
    row = get_format("triples").convert({"text": "段落", "answer": ["问题一？", "问题二？"]})
    assert row.output == "问题一？" and row.references == ("问题一？", "问题二？")
    assert row.gold == ["问题一？", "问题二？"]
    assert Row.from_json(row.to_json()) == row
    single = get_format("adgen").convert({"content": "c", "summary": ["only"]})
    assert single.output == "only" and single.references == () and single.gold == "only"
    assert "references" not in single.to_json()  # a one-item list stores as a plain output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "field 'answer' must be a string or a list of 1-16 strings, found an empty list"),
        (["a", 2], "field 'answer[1]' must be a string, found a number"),
        (["x"] * 17, "field 'answer' must be a string or a list of 1-16 strings, found a list of 17"),
    ],
)
def test_bad_reference_lists_are_wrong_type(value, message):
    with pytest.raises(RowError) as info:
        get_format("triples").convert({"text": "t", "answer": value})
    assert (info.value.code, info.value.message) == ("wrong-type", message)


def _bleu(refs: list[str], prediction: str) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method3
    return round(sentence_bleu([list(r) for r in refs], list(prediction), smoothing_function=smooth) * 100, 4)


def test_bleu_uses_every_reference_and_rouge_the_best():
    prediction, refs = "故障零的原因是什么？", ["为什么会坏？", "故障零的原因是什么？"]
    multi = score_pair(prediction, refs)
    assert multi["bleu-4"] == _bleu(refs, prediction) == 100.0
    assert multi["rouge-1"] == multi["rouge-l"] == 100.0  # the second reference matches exactly
    alone = score_pair(prediction, refs[0])
    assert alone["rouge-1"] < 100 and alone["bleu-4"] < multi["bleu-4"]
    for key in ("rouge-1", "rouge-2", "rouge-l"):
        assert multi[key] == max(score_pair(prediction, r)[key] for r in refs)


def test_one_reference_scores_as_a_plain_string_and_blank_references_are_left_out():
    prediction, label = "这是一条宽松的裤子", "宽松的裤子很好看"
    assert score_pair(prediction, [label]) == score_pair(prediction, label)
    assert score_pair(prediction, [label, "  "]) == score_pair(prediction, label)
    assert set(score_pair(prediction, ["", " "]).values()) == {0.0}


def test_metrics_take_a_mix_of_single_and_multi_reference_rows():
    bleu = get_metric("bleu-rouge-zh").score(["问题一？", "答案"], [["问题二？", "问题一？"], "答案"])
    assert [s["bleu-4"] for s in bleu.per_sample] == [100.0, _bleu(["答案"], "答案")]
    em = get_metric("exact-match").score(["b", "a"], [["a", "b"], "b"])
    assert [s["exact_match"] for s in em.per_sample] == [1.0, 0.0]
    f1 = get_metric("triple-f1").score(["a_b_c"], [["a_b_c", "x_y_z"]])
    assert f1.summary["f1"] == 1.0  # against the first reference
