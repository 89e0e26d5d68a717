"""`ft templates add|list|show` through the real CLI: versions, JSON, rendering examples, errors, help."""

from __future__ import annotations

import json

import pytest

from cli.templates import templates


@pytest.fixture
def ft_ready(ft):
    ft("init")
    return ft


def _error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_add_versions_and_same_body(ft_ready, tmp_path):
    ft = ft_ready
    assert (
        ft("templates", "add", "qa", "--body", "Q: {input} A: ").output.strip()
        == "Added template qa:1 (format)"
    )
    out = ft("templates", "add", "qa", "--body", "Q: {input} A: ").output.strip()
    assert out == "Template qa:1 already has this body; nothing added"
    body_file = tmp_path / "qa.j2"
    body_file.write_text("{% if system %}{{ system }}\n{% endif %}Q: {{ input }}\nA: ", encoding="utf-8")
    out = ft(
        "templates", "add", "qa", "--file", str(body_file), "--kind", "jinja", "--description", "with system"
    )
    assert out.output.strip() == "Added template qa:2 (jinja)"

    latest = json.loads(ft("templates", "show", "qa", "--json").output)
    assert (latest["ref"], latest["kind"], latest["description"]) == ("qa:2", "jinja", "with system")
    assert latest["body"] == body_file.read_text(encoding="utf-8") and latest["builtin"] is False
    assert json.loads(ft("templates", "show", "qa:1", "--json").output)["body"] == "Q: {input} A: "

    refs = [t["ref"] for t in json.loads(ft("templates", "list", "--json").output)]
    assert refs == ["alpaca:1", "chat:1", "plain:1", "qa:2", "triples-zh:1"]
    refs = [t["ref"] for t in json.loads(ft("templates", "list", "--all", "--json").output)]
    assert refs == ["alpaca:1", "chat:1", "plain:1", "qa:1", "qa:2", "triples-zh:1"]
    listing = ft("templates", "list").output.splitlines()
    assert listing[0].split() == ["REF", "KIND", "BUILTIN", "DESCRIPTION", "CREATED"]
    assert any(line.startswith("qa:2 ") and "with system" in line for line in listing)


def test_show_and_render_example(ft_ready, tiny_model_dir):
    ft = ft_ready
    text = ft("templates", "show", "alpaca", "--render-example").output
    assert "kind:        jinja" in text and "rendered prompt:" in text
    assert "### Input:\nThe left headlight flickers when the engine starts.\n\n### Response:" in text
    data = json.loads(ft("templates", "show", "plain:1", "--json", "--render-example").output)
    assert (
        data["example"]
        == "List the faults in this report. The left headlight flickers when the engine starts."
    )

    result = ft("templates", "show", "chat", "--render-example", ok=False)
    assert result.exit_code == 2 and "add --model NAME" in _error_line(result)
    ft("models", "add", "tiny", "--path", str(tiny_model_dir))
    data = json.loads(ft("templates", "show", "chat", "--render-example", "--model", "tiny", "--json").output)
    assert data["example"].startswith("<|im_start|>user\nList the faults")
    assert data["example"].endswith("<|im_start|>assistant\n")
    assert "(empty: the tokenizer's chat template)" in ft("templates", "show", "chat").output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--body", "{instruction}{output}"], "unknown field(s) output"),
        (["--body", "{% if input %}", "--kind", "jinja"], "not valid Jinja2"),
        (["--body", "plain text"], "uses neither {instruction} nor {input}"),
        ([], "give exactly one of --file FILE or --body TEXT"),
        (["--body", "{input}", "--file", "x"], "give exactly one of"),
        (["--file", "missing.txt"], "no such template file"),
    ],
)
def test_add_errors_are_one_line(ft_ready, args, message):
    result = ft_ready("templates", "add", "bad", *args, ok=False)
    assert result.exit_code == 2
    assert message in _error_line(result)


def test_show_errors(ft_ready):
    result = ft_ready("templates", "show", "nope", ok=False)
    assert result.exit_code == 1 and "unknown template 'nope' (known: alpaca, chat, plain, triples-zh)" in (
        _error_line(result)
    )
    result = ft_ready("templates", "show", "plain:x", ok=False)
    assert result.exit_code == 2 and "NAME:VERSION" in _error_line(result)


@pytest.mark.parametrize("command", sorted(templates.commands))
def test_every_command_has_help_with_an_example(ft, command):
    out = ft("templates", command, "--help").output
    assert "Example:\n" in out and "ft templates " + command in out
