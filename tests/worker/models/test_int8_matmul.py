"""An int8 base multiplies weight-only by default (dequantised int8 weights, activations untouched) and
with bitsandbytes' LLM.int8() on request; both train LoRA adapters."""

from __future__ import annotations

import pytest
import torch
from transformers import BitsAndBytesConfig

from catalog.errors import InvalidInput
from tests.worker.train_helpers import needs_bnb_cpu
from worker.methods import get_method
from worker.methods.lora import LoraMethodConfig
from worker.models.loading import load_base


def _int8_layers(model):
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]


@needs_bnb_cpu
def test_weight_only_layers_compute_with_the_dequantised_weights(tiny_model_dir):
    model = load_base(tiny_model_dir, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    layers = _int8_layers(model)
    assert layers and all("forward" in vars(layer) for layer in layers)
    layer = layers[0]
    x = torch.randn(3, 5, layer.in_features)
    out = layer(x)
    state = layer.state
    weight = state.CB.to(torch.float32) * state.SCB.unsqueeze(1) / 127
    assert torch.allclose(out, torch.nn.functional.linear(x, weight, layer.bias), atol=1e-5)

    # The gradient reaches the input through the dequantised weight; the int8 weight gets none.
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert torch.allclose(x.grad, torch.ones(3, 5, layer.out_features) @ weight, atol=1e-4)
    assert layer.weight.grad is None


@needs_bnb_cpu
def test_llm_int8_keeps_bitsandbytes_forward(tiny_model_dir):
    cfg = LoraMethodConfig(base_bits=8, int8_matmul="llm-int8")
    kwargs = get_method("lora").load_kwargs(cfg, "cpu")
    assert kwargs["int8_matmul"] == "llm-int8"
    model = load_base(tiny_model_dir, **kwargs)
    assert _int8_layers(model) and not any("forward" in vars(m) for m in _int8_layers(model))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"base_bits": 8, "int8_matmul": "fp8"}, "--int8-matmul must be one of weight-only, llm-int8"),
        ({"int8_matmul": "llm-int8"}, "--int8-matmul applies to an int8 base"),
    ],
)
def test_int8_matmul_flag_is_checked(flags, message):
    with pytest.raises(InvalidInput, match=message):
        LoraMethodConfig(**flags)
