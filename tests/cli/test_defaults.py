"""The defaults a user gets without flags are the measured recipes: the chat template when the
tokenizer has one, one --max-len for convert and train (a primed conversion is the one training
reuses), 3/4 of it for the prompt, evaluation batches of 64."""

from __future__ import annotations

import json
import shutil

import pytest

from cli.submit_eval import DEFAULT_BATCH_SIZE as CLI_EVAL_BATCH
from datasets_prep.lengths import DEFAULT_MAX_LEN, default_max_source_len
from datasets_prep.templates import has_chat_template
from tests.conftest import FAULTS_TEST
from worker.eval_spec import DEFAULT_BATCH_SIZE, EvalSpec
from worker.generation import GenerationConfig
from worker.train_config import TrainConfig


@pytest.fixture
def two_models(catalog, store, tiny_model_dir, tmp_path):
    """`tiny` (its tokenizer has a chat template) and `bare` (the same files without one), and the
    50 real fault test rows as `faults`."""
    from datasets_prep.register import add_dataset
    from worker.base_models import register_path

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    for name in ("chat_template.jinja", "chat_template.json"):
        (bare / name).unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    add_dataset(catalog, store, "faults", FAULTS_TEST, user="tester")
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
        register_path(s, "bare", bare, "tester")
    assert has_chat_template(tiny_model_dir) and not has_chat_template(bare)
    return catalog


def _train_spec(ft, model: str) -> dict:
    out = ft("submit", "train", "--method", "lora", "-m", model, "-d", "faults", "--json").stdout
    return json.loads(out)["spec"]


def test_train_takes_the_chat_template_when_the_tokenizer_has_one(ft, two_models):
    chat, plain = _train_spec(ft, "tiny"), _train_spec(ft, "bare")
    assert chat["template_ref"] == "chat:1" and plain["template_ref"] == "plain:1"
    assert chat["train"]["max_len"] == DEFAULT_MAX_LEN == 2048
    assert chat["convert"]["max_len"] == 2048 and chat["convert"]["max_source_len"] == 1536


def test_a_default_conversion_is_the_one_a_default_training_job_uses(ft, two_models):
    convert = json.loads(ft("submit", "convert", "faults", "--model", "tiny", "--json").stdout)["spec"]
    assert convert["template_ref"] == "chat:1" and convert["max_source_len"] == 1536
    assert convert["cache_key"] == _train_spec(ft, "tiny")["convert"]["cache_key"]


def test_max_source_len_follows_max_len_unless_given(ft, two_models):
    base = ["submit", "train", "--method", "lora", "-m", "tiny", "-d", "faults", "--json"]
    short = json.loads(ft(*base, "--max-len", "512").stdout)["spec"]["convert"]
    assert short["max_source_len"] == default_max_source_len(512) == 384
    given = json.loads(ft(*base, "--max-len", "512", "--max-source-len", "100").stdout)["spec"]["convert"]
    assert given["max_source_len"] == 100


def test_evaluation_batches_64_prompts_per_model():
    assert DEFAULT_BATCH_SIZE == CLI_EVAL_BATCH == GenerationConfig().batch_size == 64
    assert EvalSpec.__dataclass_fields__["batch_size"].default == 64
    assert TrainConfig().max_len == DEFAULT_MAX_LEN
