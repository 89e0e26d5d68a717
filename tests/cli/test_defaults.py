"""The defaults a user gets without flags are the measured recipes: the chat template when the
tokenizer has one, one --max-len for convert and train (a primed conversion is the one training
reuses), 3/4 of it for the prompt, evaluation batches of 64."""

from __future__ import annotations

import json
import shutil

import pytest

from datasets_prep.lengths import DEFAULT_MAX_LEN, default_max_source_len
from datasets_prep.templates import has_chat_template
from tests.conftest import FAULTS_TEST
from worker.evaluation.decoding import DEFAULT_BATCH_SIZE
from worker.evaluation.generation import GenerationConfig
from worker.spec import EvalSpec, EvalTarget


@pytest.fixture
def two_models(catalog, store, tiny_model_dir, tmp_path):
    """`tiny` (its tokenizer has a chat template) and `bare` (the same files without one), and the
    50 real fault test rows as `faults`."""
    from datasets_prep.register import add_dataset
    from worker.models.registration import register_path

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
    assert chat["data"]["template_ref"] == "chat:1" and plain["data"]["template_ref"] == "plain:1"
    assert chat["data"]["max_len"] == DEFAULT_MAX_LEN == 2048 and chat["data"]["max_source_len"] == 1536


def test_a_default_conversion_is_the_one_a_default_training_job_uses(ft, two_models):
    convert = json.loads(ft("submit", "convert", "faults", "--model", "tiny", "--json").stdout)["spec"]
    assert convert["template_ref"] == "chat:1" and convert["max_source_len"] == 1536
    assert convert["cache_key"] == _train_spec(ft, "tiny")["data"]["cache_key"]


def test_max_source_len_follows_max_len_unless_given(ft, two_models):
    base = ["submit", "train", "--method", "lora", "-m", "tiny", "-d", "faults", "--json"]
    short = json.loads(ft(*base, "--max-len", "512").stdout)["spec"]["data"]
    assert short["max_source_len"] == default_max_source_len(512) == 384
    given = json.loads(ft(*base, "--max-len", "512", "--max-source-len", "100").stdout)["spec"]["data"]
    assert given["max_source_len"] == 100


def test_evaluation_batches_64_prompts_per_model(ft):
    assert (
        DEFAULT_BATCH_SIZE
        == GenerationConfig().batch_size
        == EvalSpec(
            1, "m", 1, "d:1", "test", "triple-f1", [EvalTarget("x", 1, "plain:1")]
        ).decoding.batch_size
        == 64
    )
    assert "[default: 64]" in " ".join(ft("submit", "eval", "--help").output.split())


def test_evaluation_uses_the_fused_kernels_unless_told_not_to(ft, two_models):
    base = ["submit", "eval", "--base", "tiny", "-d", "faults:1:train", "--json"]
    assert json.loads(ft(*base).stdout)["spec"]["fused_kernels"] is True
    assert json.loads(ft(*base, "--no-fused-kernels").stdout)["spec"]["fused_kernels"] is False
