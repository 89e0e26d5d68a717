"""Metrics: hand-computed triple-F1 cases, bleu-rouge-zh against the libraries called directly on real
ADGEN rows, exact-match, and the registry."""

from __future__ import annotations

import json
import math

import pytest

from catalog.errors import InvalidInput
from tests.conftest import ADGEN_DEV
from worker.evaluation.metrics import METRICS, MetricResult, get_metric, register_metric
from worker.evaluation.metrics.triple_f1 import parse_triples


def triple_f1(predictions: list[str], references: list[str]) -> MetricResult:
    return get_metric("triple-f1").score(predictions, references)


# ---------------------------------------------------------------- registry


def test_builtins_are_registered_with_their_headline_and_stop_flag():
    assert {"triple-f1", "bleu-rouge-zh", "exact-match"} <= set(METRICS)
    assert get_metric("triple-f1").headline == "f1"
    assert get_metric("triple-f1").stop_on_repeated_line is True
    assert get_metric("bleu-rouge-zh").headline == "bleu-4"
    assert get_metric("bleu-rouge-zh").stop_on_repeated_line is False
    assert get_metric("exact-match").headline == "exact_match"


def test_registry_refuses_a_duplicate_name():
    before = dict(METRICS)
    with pytest.raises(ValueError, match="already registered"):

        @register_metric("triple-f1", headline="f1")
        def score(predictions, references):  # pragma: no cover - never called
            raise AssertionError

    assert METRICS == before


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(InvalidInput) as info:
        get_metric("rouge")
    message = str(info.value)
    assert "unknown metric 'rouge'" in message
    for name in ("bleu-rouge-zh", "exact-match", "triple-f1"):
        assert name in message


@pytest.mark.parametrize("name", ["triple-f1", "bleu-rouge-zh", "exact-match"])
def test_mismatched_lengths_are_refused(name):
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        get_metric(name).score(["a", "b"], ["a"])


@pytest.mark.parametrize("name", ["triple-f1", "bleu-rouge-zh", "exact-match"])
def test_no_samples_gives_zeros(name):
    result = get_metric(name).score([], [])
    assert result.per_sample == []
    assert result.summary[get_metric(name).headline] == 0.0


# ---------------------------------------------------------------- triple-f1


def test_partial_overlap():
    # 2 predicted, 3 gold, 1 correct: P = 1/2, R = 1/3, F1 = 2·(1/6)/(5/6) = 0.4
    pred = "发动机_部件故障_水温高\n风扇_部件故障_高速档不工作"
    gold = "发动机_部件故障_水温高\n风扇_部件故障_低速转动\n空调_部件故障_不制冷"
    sample = triple_f1([pred], [gold]).per_sample[0]
    assert sample["precision"] == pytest.approx(0.5)
    assert sample["recall"] == pytest.approx(1 / 3)
    assert sample["f1"] == pytest.approx(0.4)
    assert (sample["tp"], sample["pred"], sample["gold"]) == (1, 2, 3)


def test_duplicate_gold_triples_collapse():
    # gold set = {a, c} (a repeated): pred {a} -> P = 1, R = 1/2, F1 = 2/3
    gold = "阀冷系统_部件故障_故障\n阀冷系统_部件故障_故障\n冷却器_组成_换流变压器"
    pred = "阀冷系统_部件故障_故障\n阀冷系统_部件故障_故障"  # repeated prediction counts once too
    sample = triple_f1([pred], [gold]).per_sample[0]
    assert (sample["precision"], sample["recall"]) == (1.0, 0.5)
    assert sample["f1"] == pytest.approx(2 / 3)
    assert (sample["pred"], sample["gold"]) == (1, 2)


def test_empty_output():
    result = triple_f1(["", "", "发动机_部件故障_抖动"], ["发动机_部件故障_抖动", "", ""])
    empty_pred, both_empty, empty_gold = result.per_sample
    assert (empty_pred["precision"], empty_pred["recall"], empty_pred["f1"]) == (0.0, 0.0, 0.0)
    assert (both_empty["precision"], both_empty["recall"], both_empty["f1"]) == (1.0, 1.0, 1.0)
    assert (empty_gold["precision"], empty_gold["recall"], empty_gold["f1"]) == (0.0, 0.0, 0.0)
    # micro pools 0 hits over 1 predicted and 1 gold triple
    assert result.summary["micro_f1"] == 0.0
    assert result.summary["f1"] == pytest.approx(1 / 3)


def test_malformed_and_blank_lines_are_ignored():
    pred = "\n".join(
        [
            "",  # blank
            "发动机_部件故障_水温高",
            "风扇_低速转动",  # 2 parts
            "风扇_部件故障_低速_转动",  # 4 parts
            "   ",  # whitespace only
            "  风扇_部件故障_低速转动\r",  # line ends are stripped
            "这是一段解释文字",  # 1 part
            "",
        ]
    )
    gold = "发动机_部件故障_水温高\n风扇_部件故障_低速转动\n"
    assert parse_triples(pred) == {("发动机", "部件故障", "水温高"), ("风扇", "部件故障", "低速转动")}
    sample = triple_f1([pred], [gold]).per_sample[0]
    assert (sample["precision"], sample["recall"], sample["f1"]) == (1.0, 1.0, 1.0)


def test_only_malformed_lines_count_as_an_empty_prediction():
    sample = triple_f1(["发动机_水温高\na_b_c_d"], ["发动机_部件故障_水温高"]).per_sample[0]
    assert (sample["pred"], sample["f1"]) == (0, 0.0)


def test_chinese_punctuation_and_full_width_characters_are_compared_verbatim():
    gold = "ＡＢＳ泵（左前）_部件故障_灯亮，报警\n1号主变/B相_性能故障_温度＞80℃"
    exact = "ＡＢＳ泵（左前）_部件故障_灯亮，报警\n1号主变/B相_性能故障_温度＞80℃"
    half_width = "ABS泵(左前)_部件故障_灯亮,报警\n1号主变/B相_性能故障_温度＞80℃"
    result = triple_f1([exact, half_width], [gold, gold])
    assert result.per_sample[0]["f1"] == 1.0
    # the full-width head no longer matches: 1 of 2 right both ways
    assert result.per_sample[1]["f1"] == pytest.approx(0.5)


def test_inner_spaces_are_kept_and_spaces_around_underscore_matter():
    gold = "上海 别克_部件故障_不着车"
    assert parse_triples(gold) == {("上海 别克", "部件故障", "不着车")}
    result = triple_f1(
        ["  上海 别克_部件故障_不着车  ", "上海别克_部件故障_不着车", "上海 别克 _部件故障_不着车"],
        [gold] * 3,
    )
    assert [s["f1"] for s in result.per_sample] == [1.0, 0.0, 0.0]


def test_macro_and_micro_differ_on_two_samples():
    # sample 1: 1 pred, 1 gold, 1 hit -> P = R = F1 = 1
    # sample 2: 3 pred, 4 gold, 1 hit -> P = 1/3, R = 1/4, F1 = 2·(1/12)/(7/12) = 2/7
    # macro: P = (1 + 1/3)/2 = 2/3, R = (1 + 1/4)/2 = 5/8, F1 = (1 + 2/7)/2 = 9/14
    # micro: tp 2, pred 4, gold 5 -> P = 1/2, R = 2/5, F1 = 2·(1/5)/(9/10) = 4/9
    preds = ["车_部件故障_发冲", "a_部件故障_x\nb_部件故障_y\nc_性能故障_z"]
    golds = ["车_部件故障_发冲", "a_部件故障_x\nd_部件故障_y\ne_组成_f\ng_检测工具_h"]
    summary = triple_f1(preds, golds).summary
    assert summary["precision"] == pytest.approx(2 / 3)
    assert summary["recall"] == pytest.approx(5 / 8)
    assert summary["f1"] == pytest.approx(9 / 14)
    assert summary["micro_precision"] == pytest.approx(1 / 2)
    assert summary["micro_recall"] == pytest.approx(2 / 5)
    assert summary["micro_f1"] == pytest.approx(4 / 9)
    assert summary["samples"] == 2


# ---------------------------------------------------------------- bleu-rouge-zh


def _adgen_rows(n: int) -> list[dict[str, str]]:
    if not ADGEN_DEV.is_file():
        pytest.skip(f"{ADGEN_DEV} not available")
    with ADGEN_DEV.open(encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def _direct(pred: str, label: str) -> dict[str, float]:
    """ChatGLM's compute_metrics body for one pair, written straight against the libraries."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hypothesis, reference = list(jieba.cut(pred)), list(jieba.cut(label))
    scores = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
    out = {k: round(v["f"] * 100, 4) for k, v in scores.items()}
    bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    out["bleu-4"] = round(bleu * 100, 4)
    return out


def test_bleu_rouge_zh_agrees_with_the_libraries_on_real_rows():
    rows = _adgen_rows(6)
    labels = [r["output"] for r in rows]
    predictions = [
        labels[0],  # identical
        labels[1][: len(labels[1]) // 2],  # truncated
        labels[2] + "这款衣服非常百搭。",  # extended
        labels[4],  # another row's copy: low but non-zero overlap
        rows[3]["instruction"].replace("*", "，").replace("#", "是"),  # the attributes as text
        "简约而不简单的设计，彰显时尚气质。",
    ]
    result = get_metric("bleu-rouge-zh").score(predictions, labels)
    expected = [_direct(p, label) for p, label in zip(predictions, labels, strict=True)]
    for got, want in zip(result.per_sample, expected, strict=True):
        assert got == pytest.approx(want)
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert result.summary[key] == pytest.approx(sum(e[key] for e in expected) / len(expected))
    assert set(result.summary) == {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert 0 < result.summary["bleu-4"] < 100


def test_identical_prediction_gives_rouge_100():
    label = _adgen_rows(1)[0]["output"]
    sample = get_metric("bleu-rouge-zh").score([label], [label]).per_sample[0]
    assert sample["rouge-1"] == sample["rouge-2"] == sample["rouge-l"] == 100.0
    assert sample["bleu-4"] == 100.0


@pytest.mark.parametrize(
    ("pred", "label"), [("", "简约的牛仔外套。"), ("  \n\t", "简约的牛仔外套。"), ("外套", "")]
)
def test_blank_prediction_or_label_scores_zero_not_nan(pred, label):
    result = get_metric("bleu-rouge-zh").score([pred, "简约的牛仔外套。"], [label, "简约的牛仔外套。"])
    assert result.per_sample[0] == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    assert result.summary["rouge-l"] == pytest.approx(50.0)
    assert not any(math.isnan(v) for v in result.summary.values())


# ---------------------------------------------------------------- exact-match


def test_exact_match_strips_and_averages():
    result = get_metric("exact-match").score(
        ["  发动机_部件故障_抖动\n", "发动机_部件故障_抖动", "", "Ａ"],
        ["发动机_部件故障_抖动", "发动机_部件故障_抖", " ", "A"],
    )
    assert [s["exact_match"] for s in result.per_sample] == [1.0, 0.0, 1.0, 0.0]
    assert result.summary == {"exact_match": 0.5}
