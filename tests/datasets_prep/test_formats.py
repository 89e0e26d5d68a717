"""Source formats: every format and key variant converts to the right canonical row, bad rows raise
the right validation code, and `auto` picks by keys (or says why it cannot)."""

from __future__ import annotations

import json

import pytest

from catalog.errors import InvalidInput
from datasets_prep.formats import FORMATS, detect, get_format, names, register
from datasets_prep.reader import RowError
from datasets_prep.rows import Row
from tests.conftest import ADGEN_DEV, FAULTS_TEXT_ANSWER, FAULTS_TRAIN


def convert(fmt: str, obj: dict) -> Row:
    return get_format(fmt).convert(obj)


def code_of(fmt: str, obj: dict) -> tuple[str, str]:
    with pytest.raises(RowError) as info:
        convert(fmt, obj)
    return info.value.code, info.value.message


def first_object(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.loads(f.readline())


# ---------------------------------------------------------------- triples


def test_triples_instruction_input_output_keeps_the_fields():
    row = convert("triples", {"instruction": "抽取：", "input": "风扇不转", "output": "风扇_部件故障_不转"})
    assert row == Row(instruction="抽取：", input="风扇不转", output="风扇_部件故障_不转")


def test_triples_text_answer_maps_text_to_input_and_answer_to_output():
    row = convert("triples", {"text": "风扇不转", "answer": "风扇_部件故障_不转"})
    assert row == Row(instruction="", input="风扇不转", output="风扇_部件故障_不转")


def test_triples_real_rows_of_both_variants_give_the_same_input_and_output():
    a = convert("triples", first_object(FAULTS_TEXT_ANSWER))
    with open(FAULTS_TRAIN.with_name("fault_triples_test.jsonl"), encoding="utf-8") as f:
        b = convert("triples", json.loads(f.readline()))
    assert (a.input, a.output) == (b.input, b.output)
    assert a.instruction == "" and b.instruction.startswith("你现在是一个信息抽取模型")


def test_triples_output_may_be_empty_but_input_may_not():
    assert convert("triples", {"instruction": "i", "input": "x", "output": ""}).output == ""
    assert convert("triples", {"text": "x", "answer": ""}).output == ""
    assert code_of("triples", {"instruction": "i", "input": " \n", "output": "o"})[0] == "empty-field"
    assert code_of("triples", {"text": "", "answer": "o"})[0] == "empty-field"


def test_triples_missing_and_wrong_type():
    assert code_of("triples", {"text": "x"}) == ("missing-field", "no field 'answer'")
    assert code_of("triples", {"instruction": "i", "output": "o"}) == ("missing-field", "no field 'input'")
    code, message = code_of("triples", {"instruction": "i", "input": 3, "output": "o"})
    assert code == "wrong-type" and "'input'" in message and "a number" in message
    assert code_of("triples", {"instruction": "i", "input": "x", "output": None})[0] == "wrong-type"


# ---------------------------------------------------------------- adgen


def test_adgen_content_summary_is_input_and_output():
    row = convert("adgen", {"content": "类型#裤*版型#宽松", "summary": "宽松的裤子"})
    assert row == Row(instruction="", input="类型#裤*版型#宽松", output="宽松的裤子")


def test_adgen_instruction_output_treats_the_instruction_as_the_prompt_content():
    obj = first_object(ADGEN_DEV)
    row = convert("adgen", obj)
    assert row.instruction == "" and row.input == obj["instruction"] and row.output == obj["output"]
    assert row.input.startswith("类型#")


def test_adgen_needs_both_fields_non_empty():
    assert code_of("adgen", {"content": "类型#裤"})[0] == "missing-field"
    assert code_of("adgen", {"instruction": "类型#裤", "output": ""})[0] == "empty-field"
    assert code_of("adgen", {"content": ["类型#裤"], "summary": "s"})[0] == "wrong-type"


# ---------------------------------------------------------------- alpaca


def test_alpaca_with_and_without_input():
    row = convert("alpaca", {"instruction": "Add.", "input": "1+1", "output": "2"})
    assert row == Row("Add.", "1+1", "2")
    assert convert("alpaca", {"instruction": "Say hi.", "output": "hi"}) == Row("Say hi.", "", "hi")
    assert convert("alpaca", {"instruction": "Say hi.", "input": None, "output": "hi"}).input == ""


def test_alpaca_system_and_history_as_llama_factory_writes_them():
    row = convert(
        "alpaca",
        {
            "instruction": "And 2+2?",
            "input": "",
            "output": "4",
            "system": "You are a calculator.",
            "history": [["1+1?", "2"], ["2+1?", "3"]],
        },
    )
    assert row.system == "You are a calculator."
    assert row.history == (("1+1?", "2"), ("2+1?", "3"))
    assert row.to_json()["history"] == [["1+1?", "2"], ["2+1?", "3"]]


def test_alpaca_bad_rows():
    assert code_of("alpaca", {"instruction": "", "output": "o"})[0] == "empty-field"
    assert code_of("alpaca", {"instruction": "i", "output": " "})[0] == "empty-field"
    assert code_of("alpaca", {"instruction": "i"})[0] == "missing-field"
    assert code_of("alpaca", {"instruction": "i", "output": ["a", "b"]})[0] == "wrong-type"  # ranking data
    assert code_of("alpaca", {"instruction": "i", "output": "o", "history": "x"})[0] == "wrong-type"
    code, message = code_of("alpaca", {"instruction": "i", "output": "o", "history": [["only one"]]})
    assert code == "wrong-type" and "history[0]" in message
    # an empty instruction is fine when the input carries the prompt
    assert convert("alpaca", {"instruction": "", "input": "x", "output": "o"}).input == "x"


# ---------------------------------------------------------------- sharegpt


def test_sharegpt_conversations_from_value_with_system_turn_and_history():
    row = convert(
        "sharegpt",
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "Name a colour"},
                {"from": "gpt", "value": "Red"},
            ]
        },
    )
    assert row == Row(
        instruction="Name a colour", input="", output="Red", system="Be brief.", history=(("Hi", "Hello"),)
    )


def test_sharegpt_messages_role_content():
    row = convert(
        "sharegpt",
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    )
    assert row == Row(instruction="2+2?", input="", output="4")


def test_sharegpt_top_level_system_as_llama_factory_writes_it():
    obj = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "system": "S"}
    assert convert("sharegpt", obj).system == "S"
    obj["conversations"].insert(0, {"from": "system", "value": "T"})
    assert code_of("sharegpt", obj)[0] == "bad-turns"


@pytest.mark.parametrize(
    ("turns", "code", "fragment"),
    [
        ([{"from": "human", "value": "q"}], "bad-turns", "end with an assistant turn"),
        ([], "bad-turns", "end with an assistant turn"),
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], "bad-turns", "expected user"),
        (
            [{"from": "human", "value": "q"}, {"from": "human", "value": "2"}, {"from": "gpt", "value": "a"}],
            "bad-turns",
            "expected assistant",
        ),
        ([{"from": "observation", "value": "x"}], "bad-turns", "'observation'"),
        ([{"from": "human", "value": ""}, {"from": "gpt", "value": "a"}], "empty-field", "[0].value"),
        ([{"from": "human"}, {"from": "gpt", "value": "a"}], "missing-field", "[0].value"),
        ([{"from": "human", "value": 1}, {"from": "gpt", "value": "a"}], "wrong-type", "[0].value"),
        (["hi", {"from": "gpt", "value": "a"}], "wrong-type", "conversations[0]"),
    ],
)
def test_sharegpt_bad_conversations(turns, code, fragment):
    got_code, message = code_of("sharegpt", {"conversations": turns})
    assert got_code == code and fragment in message


def test_sharegpt_needs_a_list_of_turns():
    assert code_of("sharegpt", {"conversations": "hi"})[0] == "wrong-type"
    assert code_of("sharegpt", {"id": 3})[0] == "missing-field"


# ---------------------------------------------------------------- registry and auto


def test_registry_names_and_unknown_format():
    assert names() == ["triples", "adgen", "alpaca", "sharegpt", "auto"]
    with pytest.raises(InvalidInput, match="unknown format 'csv'.*triples\\|adgen"):
        get_format("csv")
    with pytest.raises(ValueError, match="already registered"):
        register(FORMATS["triples"])


@pytest.mark.parametrize(
    ("keys", "fmt"),
    [
        ({"text", "answer"}, "triples"),
        ({"content", "summary"}, "adgen"),
        ({"instruction", "input", "output"}, "alpaca"),
        ({"instruction", "output", "history"}, "alpaca"),
        ({"conversations"}, "sharegpt"),
        ({"messages", "id"}, "sharegpt"),
    ],
)
def test_auto_picks_by_keys(keys, fmt):
    assert detect(keys, "f.jsonl:1").name == fmt


def test_auto_says_when_keys_fit_two_formats():
    with pytest.raises(InvalidInput) as info:
        detect({"instruction", "output"}, "adgen_dev.jsonl:1")
    message = str(info.value)
    assert "adgen_dev.jsonl:1" in message and "--format adgen or --format alpaca" in message


def test_auto_says_when_no_format_fits():
    with pytest.raises(InvalidInput, match=r"tell the format of f.jsonl:3 from its keys \(prompt, q\)"):
        detect({"q", "prompt"}, "f.jsonl:3")
