"""`ft models add|list|show` through the real CLI: each source, JSON output, one-line errors, help."""

from __future__ import annotations

import json

import pytest

from cli.models import models
from tests.worker.models.test_base_models import write_tiny_gguf


@pytest.fixture
def ft_ready(ft):
    ft("init")
    return ft


def _error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


def test_add_path_list_show(ft_ready, tiny_model_dir):
    ft = ft_ready
    out = ft("models", "add", "tiny", "--path", str(tiny_model_dir)).output
    assert out.startswith("Added base model tiny (path): LlamaForCausalLM") and "float32" in out

    listing = ft("models", "list").output.splitlines()
    assert listing[0].split() == ["NAME", "SOURCE", "ARCHITECTURE", "PARAMS", "DTYPE", "CREATED"]
    assert listing[1].split()[:5] == ["tiny", "path", "LlamaForCausalLM", "139.58K", "float32"]

    [row] = json.loads(ft("models", "list", "--json").output)
    assert row["name"] == "tiny" and row["uri"] == str(tiny_model_dir.resolve())
    shown = json.loads(ft("models", "show", "tiny", "--json").output)
    assert shown == row and shown["parameter_count"] == 139_584 and shown["dtype"] == "float32"

    text = ft("models", "show", "tiny").output
    for needle in ("architecture:", "LlamaForCausalLM", "parameter_count:", "139584", "source:", "path"):
        assert needle in text


def test_add_gguf_and_hub(ft_ready, tiny_model_dir, tmp_path, settings):
    ft = ft_ready
    gguf_file = write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    result = ft("models", "add", "g", "--gguf", str(gguf_file))
    assert "dequantising" in result.output  # progress is shown (on stderr)
    assert "Added base model g (gguf): LlamaForCausalLM" in result.output
    shown = json.loads(ft("models", "show", "g", "--json").output)
    assert shown["source"] == "gguf" and shown["uri"].startswith("models/") and len(shown["sha256"]) == 64
    assert (settings.artifacts / shown["uri"] / "model.safetensors").is_file()
    assert str(settings.artifacts / shown["uri"]) in ft("models", "show", "g").output

    out = ft("models", "add", "qwen", "--hub", "Qwen/Qwen2.5-0.5B", "--revision", "abc").output
    assert "Qwen/Qwen2.5-0.5B@abc (resolved by a worker)" in out
    assert [m["name"] for m in json.loads(ft("models", "list", "--json").output)] == ["g", "qwen"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "give exactly one of --path DIR, --gguf FILE or --hub ORG/NAME"),
        (["--path", "X", "--hub", "a/b"], 2, "give exactly one of"),
        (["--path", "MODEL", "--trust-remote-code"], 2, "--trust-remote-code needs a pinned --revision"),
        (
            ["--hub", "a/b", "--trust-remote-code", "--revision", "r"],
            2,
            "--trust-remote-code is only accepted",
        ),
        (["--gguf", "f.gguf", "--revision", "r"], 2, "do not apply to --gguf"),
        (["--gguf", "missing.gguf"], 2, "no such GGUF file"),
        (["--path", "missing-dir"], 2, "no such model directory"),
        (["--hub", "not-a-hub-id"], 2, "expected ORG/NAME"),
    ],
)
def test_add_errors_are_one_line(ft_ready, tiny_model_dir, args, code, message):
    args = [str(tiny_model_dir) if a == "MODEL" else a for a in args]
    result = ft_ready("models", "add", "m", *args, ok=False)
    assert result.exit_code == code
    assert message in _error_line(result)


def test_collision_unknown_and_bad_name(ft_ready, tiny_model_dir):
    ft = ft_ready
    ft("models", "add", "tiny", "--path", str(tiny_model_dir))
    result = ft("models", "add", "tiny", "--path", str(tiny_model_dir), ok=False)
    assert result.exit_code == 1 and "'tiny' already exists" in _error_line(result)
    result = ft("models", "show", "nope", ok=False)
    assert result.exit_code == 1 and "unknown base model 'nope' (known: tiny)" in _error_line(result)
    result = ft("models", "add", "../x", "--path", str(tiny_model_dir), ok=False)
    assert result.exit_code == 2 and "invalid model name" in _error_line(result)


def test_list_empty_and_uninitialised(ft):
    result = ft("models", "list", ok=False)
    assert result.exit_code == 1 and "ft init" in _error_line(result)
    ft("init")
    assert "no base models" in ft("models", "list").output
    assert json.loads(ft("models", "list", "--json").output) == []


@pytest.mark.parametrize("command", sorted(models.commands))
def test_every_command_has_help_with_an_example(ft, command):
    out = ft("models", command, "--help").output
    assert "Example:\n" in out and "ft models " + command in out
