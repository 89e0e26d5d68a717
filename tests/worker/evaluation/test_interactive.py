"""worker/evaluation/interactive.py on the tiny model and a LoRA adapter trained for real: the streamed
pieces add up to the engine's answer, which is the engine's own output for that prompt; a conversation
is remembered by a chat template and not by a string one; prompt files fail on `file:line`; the
targets resolve (adapter, base, merged export) with the template each was trained with."""

from __future__ import annotations

import json

import pytest

from catalog.errors import InvalidInput, NotFound
from tests.worker.eval_helpers import register_faults, train
from worker.evaluation.decoding import Decoding
from worker.evaluation.interactive import (
    Conversation,
    StreamedText,
    Talker,
    merged_adapter_name,
    prompt_row,
    read_prompts,
    resolve_target,
)

PROMPT = "发动机怠速不稳，检查发现节气门积碳。"
SHORT = Decoding(max_new_tokens=10, batch_size=2)


@pytest.fixture
def lora(catalog, store, lively_model_dir, tmp_path, settings, one_thread):
    """The tiny model `tiny` and `f-lora` (3 steps, template plain) registered."""
    register_faults(catalog, store, lively_model_dir, tmp_path)
    train(catalog, settings, store, "f-lora", "lora", {"rank": 4})
    return catalog


def talker(catalog, store, **request) -> Talker:
    with catalog.session() as s:
        return Talker.load(resolve_target(s, store, **request), "cpu")


def test_streamed_answer_is_the_engines_answer(lora, store, lively_model_dir):
    from worker.evaluation.generation import GenerationConfig, generate
    from worker.methods.saving import load_for_inference
    from worker.models.loading import load_tokenizer

    t = talker(lora, store, adapter="f-lora")
    assert (t.target.template_ref, t.target.method, str(t.device)) == ("plain:1", "lora", "cpu")
    pieces: list[str] = []
    streamed = t.stream(prompt_row(PROMPT), SHORT, pieces.append)
    assert len(pieces) > 1 and "".join(pieces).rstrip() == streamed.texts[0] != ""
    assert streamed.new_tokens == 10

    with lora.session() as s:
        from catalog.adapters import get_adapter

        a = get_adapter(s, "f-lora")
        artifact, sha256 = store.path(a.artifact_uri), a.sha256
    model = load_for_inference(lively_model_dir, artifact, "lora", sha256=sha256)
    engine = generate(model, load_tokenizer(lively_model_dir), [PROMPT], GenerationConfig.of(SHORT))
    assert streamed.texts == engine.texts  # `plain` renders the input as it is
    assert t.complete([prompt_row(PROMPT)], SHORT).texts == engine.texts


def test_a_chat_template_keeps_the_conversation_a_string_template_does_not(lora, store):
    t = talker(lora, store, adapter="f-lora", template="chat")
    assert t.remembers and t.target.template_ref == "chat:1"
    chat = Conversation(t, system="be brief")
    first = chat.ask("第一个问题", SHORT, lambda text: None)
    chat.ask("第二个问题", SHORT, lambda text: None)
    assert chat.history[0] == ("第一个问题", first) and len(chat.history) == 2
    prompt = t.prompt(prompt_row("第三个", system="be brief", history=chat.history))
    assert (
        prompt.index("be brief") < prompt.index("第一个问题") < prompt.index(first) < prompt.index("第三个")
    )
    chat.reset()
    assert chat.history == []
    # after /reset the first question is answered as it was the first time
    assert chat.ask("第一个问题", SHORT, lambda text: None) == first

    plain = Conversation(talker(lora, store, adapter="f-lora"))
    assert not plain.talker.remembers
    plain.ask("第一个问题", SHORT, lambda text: None)
    assert plain.history == []


def test_streaming_with_the_repeated_line_stop_shows_only_the_final_text():
    shown: list[str] = []
    text = StreamedText(shown.append, hold_lines=True)
    for piece in ["a_b", "_c\nd_e", "_f\n", "a_b_c", "\nzz"]:
        text.feed(piece)
    assert "".join(shown) == "a_b_c\nd_e_f\n"  # the repeated line never shows
    text.finish("a_b_c\nd_e_f")
    assert "".join(shown) == "a_b_c\nd_e_f\n"
    free: list[str] = []
    plain = StreamedText(free.append)
    plain.feed("x")
    plain.finish("xyz")  # what the engine produced after the last piece still shows
    assert "".join(free) == "xyz"


def test_prompt_files_read_canonical_keys_and_fail_on_file_line(tmp_path):
    good = tmp_path / "prompts.jsonl"
    lines = [{"input": "a"}, {"instruction": "i", "input": "b", "output": "gold"},
             {"input": "c", "history": [["u", "v"]], "system": "s"}]  # fmt: skip
    good.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n")
    read = read_prompts(good, system="default")
    assert [p.line for p in read] == [1, 2, 4] and [p.data for p in read] == lines
    assert (read[0].row.input, read[0].row.system) == ("a", "default")
    assert (read[1].row.instruction, read[1].row.output) == ("i", "")  # the gold output is not the prompt
    assert (read[2].row.history, read[2].row.system) == ((("u", "v"),), "s")

    bad_lines = {
        "{not json": "not valid JSON",
        '["a"]': "expected a JSON object",
        '{"text": "a"}': 'no "input" or "instruction" key \\(keys: text\\)',
        '{"input": 3}': '"input" must be a string',
        '{"input": "a", "history": [["u"]]}': '"history" must be a list',
    }
    for line, message in bad_lines.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"input": "fine"}\n\n' + line + "\n", encoding="utf-8")
        with pytest.raises(InvalidInput, match=f"^{bad}:3: {message}"):
            read_prompts(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInput, match="no prompts"):
        read_prompts(tmp_path / "empty.jsonl")
    with pytest.raises(InvalidInput, match="no such file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_targets_resolve_with_their_templates(lora, store, tmp_path, lively_model_dir):
    from worker.methods.saving import merge_to_dir

    with lora.session() as s:
        base = resolve_target(s, store, base="tiny")
        assert (base.label, base.template_ref, base.artifact_dir) == ("tiny", "chat:1", None)
        with pytest.raises(NotFound, match="unknown adapter 'nope'"):
            resolve_target(s, store, adapter="nope")
        with pytest.raises(NotFound, match="--base: unknown base model 'nope'.*model directory"):
            resolve_target(s, store, base="nope")
        with pytest.raises(NotFound, match="--template: unknown template 'nope'"):
            resolve_target(s, store, adapter="f-lora", template="nope")
        from catalog.adapters import get_adapter

        artifact = store.path(get_adapter(s, "f-lora").artifact_uri)
    merged = merge_to_dir(lively_model_dir, artifact, tmp_path / "merged", dtype="float32",
                          card={"adapter": "f-lora", "base_model": "tiny"})  # fmt: skip
    assert merged_adapter_name(merged) == "f-lora" and merged_adapter_name(lively_model_dir) is None
    with lora.session() as s:
        target = resolve_target(s, store, base=str(merged))
    assert (target.template_ref, target.model_dir) == ("plain:1", merged.resolve())  # the adapter's template
    adapter = talker(lora, store, adapter="f-lora").complete([prompt_row(PROMPT)], SHORT).texts
    merged_out = talker(lora, store, base=str(merged)).complete([prompt_row(PROMPT)], SHORT).texts
    assert merged_out == adapter
