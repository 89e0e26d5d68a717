"""Item 10 of issue 14: registering a base model reads its config and its weights' shapes without
loading a weight (the model on `meta`, the safetensors headers) and refuses a config that does not
match the weights with one line naming the tensor and both shapes; nothing is registered then."""

from __future__ import annotations

import json
import shutil

import pytest

from catalog.base_models import list_base_models
from catalog.errors import InvalidInput
from worker.models.registration import register_path, safetensors_shapes


def _edited(tiny_model_dir, tmp_path, **changes):
    dest = shutil.copytree(tiny_model_dir, tmp_path / "edited")
    config = json.loads((dest / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_an_edited_intermediate_size_is_refused_naming_the_tensor_and_both_shapes(
    catalog, tiny_model_dir, tmp_path
):
    edited = _edited(tiny_model_dir, tmp_path, intermediate_size=256)  # the weights have 128
    with catalog.session() as s, pytest.raises(InvalidInput) as refused:
        register_path(s, "edited", edited, "tester")
    message = str(refused.value)
    assert "\n" not in message
    assert "tensor model.layers.0.mlp.down_proj.weight in model.safetensors" in message
    assert "has shape [64, 128] but config.json makes it [64, 256]" in message
    with catalog.session() as s:
        assert list_base_models(s) == []


def test_an_edited_vocabulary_is_refused_through_the_cli(ft, catalog, tiny_model_dir, tmp_path):
    edited = _edited(tiny_model_dir, tmp_path, vocab_size=2048)
    result = ft("models", "add", "edited", "--path", str(edited), ok=False)
    assert result.exit_code != 0
    assert "tensor model.embed_tokens.weight in model.safetensors has shape [" in result.output
    assert ", 64] but config.json makes it [2048, 64]" in result.output
    assert "Traceback" not in result.output


def test_the_untouched_model_registers_and_its_shapes_come_from_the_header(catalog, tiny_model_dir):
    shapes = safetensors_shapes(tiny_model_dir / "model.safetensors")
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (64, 128)
    with catalog.session() as s:
        model = register_path(s, "tiny", tiny_model_dir, "tester")
        assert model.parameter_count > 0


def test_a_safetensors_file_with_a_garbage_header_is_one_line(catalog, tiny_model_dir, tmp_path):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes((10).to_bytes(8, "little") + b"not json!!")
    with catalog.session() as s, pytest.raises(InvalidInput, match="not a safetensors file"):
        register_path(s, "broken", broken, "tester")


def test_a_pytorch_bin_checkpoint_is_checked_too(catalog, tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    edited = _edited(tiny_model_dir, tmp_path, intermediate_size=256)
    torch.save(load_file(edited / "model.safetensors"), edited / "pytorch_model.bin")
    (edited / "model.safetensors").unlink()
    with (
        catalog.session() as s,
        pytest.raises(InvalidInput, match=r"in pytorch_model.bin has shape \[64, 128\]"),
    ):
        register_path(s, "edited-bin", edited, "tester")
