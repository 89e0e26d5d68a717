"""`ft generate` and `ft chat` through click's CliRunner, on the tiny model and a LoRA adapter trained
for real: greedy answers equal the evaluation engine's (an `eval` job's predictions on the same rows),
a prompt file's bad line is named by file:line, a chat is driven by input lines, and unknown names
give one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAULTS_TEST
from tests.worker.eval_helpers import evaluate, register_faults, train

FLAGS = ["--device", "cpu", "--max-new-tokens", "8"]


@pytest.fixture
def one_thread():
    """Tiny matrices: extra threads only add synchronisation on a shared 2-core box."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lora(catalog, store, lively_model_dir, tmp_path, settings, one_thread):
    """`tiny` and `f-lora` (3 steps, template plain) registered; the adapter evaluated on 4 test rows."""
    register_faults(catalog, store, lively_model_dir, tmp_path)
    train(catalog, settings, store, "f-lora", "lora", {"rank": 4})
    return evaluate(catalog, settings, store, adapters=["f-lora"])


def eval_predictions(catalog, store, job) -> list[dict]:
    from catalog.models import Evaluation

    with catalog.session() as s:
        (ev,) = s.query(Evaluation).filter(Evaluation.job_id == job.id)
        path = store.path(ev.predictions_uri) / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_equals_the_evaluation_engine(lora, catalog, store, ft, tmp_path):
    expected = eval_predictions(
        catalog, store, lora
    )  # greedy, 8 new tokens, batches of 2, repeated-line stop
    rows = FAULTS_TEST.read_text(encoding="utf-8").splitlines()[:4]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    done = ft("generate", "f-lora", "--file", str(prompts), "-o", str(out), "--batch-size", "2",
              "--stop-on-repeated-line", *FLAGS)  # fmt: skip
    assert "4 prompts:" in done.stderr and "template plain:1" in done.stderr
    answers = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["prediction"] for a in answers] == [e["prediction"] for e in expected]
    assert [{k: v for k, v in a.items() if k != "prediction"} for a in answers] == [
        json.loads(r) for r in rows
    ]

    # one prompt, streamed: the first row's prompt is its instruction + input under `plain`
    first = json.loads(rows[0])
    one = ft("generate", "f-lora", first["instruction"] + first["input"], "--stop-on-repeated-line", *FLAGS)
    assert one.stdout == expected[0]["prediction"] + "\n" and "new tokens in" in one.stderr
    data = json.loads(ft("generate", "f-lora", "你好", "--json", *FLAGS).stdout)
    assert (data["model"], data["template"], data["device"], data["dtype"]) == (
        "f-lora",
        "plain:1",
        "cpu",
        "float32",
    )
    again = ft("generate", "f-lora", "你好", *FLAGS).stdout
    assert again == data["prediction"] + "\n" and data["new_tokens"] > 0

    base = ft("generate", "--base", "tiny", "你好", "--template", "plain", *FLAGS).stdout
    assert base != again  # the adapter's answer is its own
    merged = tmp_path / "merged"
    ft("adapters", "export", "f-lora", str(merged), "--merge", "--dtype", "fp32")
    from_dir = ft("generate", "--base", str(merged), "你好", *FLAGS)
    assert from_dir.stdout == again and "template plain:1" in from_dir.stderr  # the adapter's template


def test_file_errors_unknown_names_and_flag_errors_are_one_line(lora, ft, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a"}\n{"input": "b"}\n{"text": "c"}\n', encoding="utf-8")
    cases = [
        (
            ["generate", "f-lora", "--file", str(bad)],
            2,
            f'{bad}:3: no "input" or "instruction" key (keys: text)',
        ),
        (["generate", "nope", "hi"], 1, "unknown adapter 'nope' (recent: f-lora); see `ft adapters list`"),
        (["chat", "nope"], 1, "unknown adapter 'nope'"),
        (["generate", "--base", "nope", "hi"], 1, "--base: unknown base model 'nope' (known: tiny)"),
        (["generate", "f-lora"], 2, "nothing to answer: give a PROMPT or --file F.jsonl"),
        (["generate", "f-lora", "hi", "--temperature", "0.5"], 2, "--temperature applies to sampling only"),
        (["generate", "f-lora", "hi", "-t", "nope"], 1, "--template: unknown template 'nope'"),
    ]
    for args, code, message in cases:
        result = ft(*args, ok=False)
        assert result.exit_code == code, (args, result.output)
        (line,) = result.stderr.strip().splitlines()  # one line, before any model is loaded
        assert line.startswith(f"Error: {message}"), (args, line)
        assert "Traceback" not in result.output and result.stdout == ""


def test_chat_streams_answers_keeps_the_conversation_and_exits_cleanly(lora, ft):
    lines = "第一个问题\n第二个问题\n/reset\n第一个问题\n/exit\nnever read\n"
    done = ft("chat", "f-lora", "--template", "chat", *FLAGS, input=lines)
    answers = [line.split("f-lora> ", 1)[1] for line in done.stdout.splitlines() if "f-lora> " in line]
    assert len(answers) == 3 and all(answers)
    assert answers[2] == answers[0] != answers[1]  # after /reset the first question is asked afresh
    assert "(conversation reset)" in done.stderr and "never read" not in done.stdout
    single = json.loads(ft("generate", "f-lora", "第一个问题", "-t", "chat", "--json", *FLAGS).stdout)
    assert single["prediction"] == answers[0]

    # Ctrl-D (the end of the input) ends the chat without an error; a string template says it forgets
    eof = ft("chat", "f-lora", *FLAGS, input="第一个问题\n")
    assert eof.exit_code == 0 and eof.stdout.count("f-lora> ") == 1
    assert "renders one turn: each line is answered alone" in eof.stderr
