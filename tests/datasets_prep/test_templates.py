"""Prompt templates: every built-in renders, bodies are validated, chat needs a chat template, and
versions are immutable (a changed body is a new version; the same body is recognised)."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from catalog.errors import InvalidInput, NotFound
from catalog.templates import get_template, list_templates
from datasets_prep.rows import Row
from datasets_prep.templates import BUILTINS, TRIPLES_INSTRUCTION, add_template, render_prompt, validate_body

ROW = Row(
    instruction="抽取三元组：", input="左前大灯闪烁", output="大灯_部件故障_闪烁", system="You extract."
)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_renders(name, tok):
    kind, body, description = BUILTINS[name]
    validate_body(kind, body)
    prompt = render_prompt(kind, body, ROW, tok)
    assert ROW.input in prompt and ROW.output not in prompt and description
    if name != "triples-zh":
        assert ROW.instruction in prompt


def test_builtin_renderings():
    assert render_prompt(*BUILTINS["plain"][:2], ROW) == "抽取三元组：左前大灯闪烁"
    assert render_prompt(*BUILTINS["triples-zh"][:2], ROW) == TRIPLES_INSTRUCTION + "左前大灯闪烁"
    alpaca = BUILTINS["alpaca"][:2]
    assert "### Input:\n左前大灯闪烁" in render_prompt(*alpaca, ROW)
    assert "### Input:" not in render_prompt(*alpaca, Row("Say hi.", "", "hi"))
    assert render_prompt(*alpaca, ROW).endswith("### Response:\n")


def test_chat_renders_system_history_and_generation_prompt(tok):
    row = Row("Q2 ", "more", "A2", system="sys", history=(("Q1", "A1"),))
    assert render_prompt("chat", "", row, tok) == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2 more<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_needs_a_tokenizer_with_a_chat_template(tok):
    with pytest.raises(InvalidInput, match="needs a tokenizer with a chat template"):
        render_prompt("chat", "", ROW, None)
    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(InvalidInput, match="needs a tokenizer with a chat template"):
        render_prompt("chat", "", ROW, bare)


@pytest.mark.parametrize(
    "kind, body, message",
    [
        ("format", "{instruction}{output}", "unknown field"),
        ("format", "{prompt}", "unknown field"),
        ("format", "no fields at all", "uses neither"),
        ("format", "{instruction", "not a valid format string"),
        ("jinja", "{% if input %}{{ input }}", "not valid Jinja2"),
        ("jinja", "{{ input }", "not valid Jinja2"),
        ("markdown", "{input}", "unknown template kind"),
    ],
)
def test_invalid_bodies(kind, body, message):
    with pytest.raises(InvalidInput, match=message):
        validate_body(kind, body)


def test_literal_braces_in_format():
    validate_body("format", 'JSON {{"text": "{input}"}}')
    assert render_prompt("format", 'JSON {{"text": "{input}"}}', ROW) == 'JSON {"text": "左前大灯闪烁"}'


def test_versions_are_immutable(catalog):
    with catalog.session() as s:
        v1, created = add_template(s, "qa", "format", "Q: {input}\nA: ", "tester", "question/answer")
        assert (v1.ref, created, v1.builtin) == ("qa:1", True, False)
        same, created = add_template(s, "qa", "format", "Q: {input}\nA: ", "tester")
        assert (same.id, created) == (v1.id, False)
        v2, created = add_template(s, "qa", "format", "Question: {input}\nAnswer: ", "tester")
        assert (v2.ref, created) == ("qa:2", True)
        v3, created = add_template(s, "qa", "jinja", "Question: {input}\nAnswer: ", "tester")
        assert (v3.ref, created) == ("qa:3", True)  # the kind is part of the identity
    with catalog.session() as s:
        assert get_template(s, "qa").version == 3
        assert get_template(s, "qa:1").body == "Q: {input}\nA: "
        latest = {t.ref for t in list_templates(s)}
        every = {t.ref for t in list_templates(s, all_versions=True)}
    assert latest == {"alpaca:1", "chat:1", "plain:1", "triples-zh:1", "qa:3"}
    assert every == latest | {"qa:1", "qa:2"}


def test_unknown_template_and_bad_names(catalog):
    with pytest.raises(NotFound, match=r"unknown template 'nope' \(known: alpaca, chat, plain, triples-zh\)"):
        with catalog.session() as s:
            get_template(s, "nope")
    with (
        pytest.raises(NotFound, match=r"template plain has no version 9 \(versions: 1\)"),
        catalog.session() as s,
    ):
        get_template(s, "plain:9")
    with pytest.raises(InvalidInput, match="NAME:VERSION"), catalog.session() as s:
        get_template(s, "plain:latest")
    with pytest.raises(InvalidInput, match="invalid template name"), catalog.session() as s:
        add_template(s, "a/b", "format", "{input}", "tester")
