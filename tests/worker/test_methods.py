"""Every training method on the tiny real Llama: registry, flag validation, what each one trains,
its artifact saved, reloaded onto the base and generating; qlora / int8 refused without CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from catalog.errors import InvalidInput
from tests.worker.train_helpers import run_cpu, tokenised_rows
from worker.adapter_io import load_for_inference, merge_to_dir, save_artifact
from worker.methods import METHODS, get_method, register_method
from worker.methods.freeze import FreezeConfig, find_blocks
from worker.methods.full import FullConfig
from worker.methods.lora import LoraMethodConfig
from worker.methods.ptuning import PTuningConfig
from worker.methods.ptuning_v2 import PTuningV2Config
from worker.methods.qlora import QLoraConfig
from worker.model_loading import count_parameters, load_base, load_tokenizer
from worker.train_config import TrainConfig
from worker.trainer import TrainPaths

BASE_PARAMS = 139_584  # the tiny Llama: vocab 1024 x 64 (tied) + 2 blocks + final norm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: extra threads only add synchronisation (and thrash on a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows(tiny_model_dir):
    return tokenised_rows(tiny_model_dir, 4)


def test_registry_lists_every_method_and_refuses_duplicates():
    assert set(METHODS) == {"freeze", "ptuning", "ptuning-v2", "lora", "qlora", "full"}
    assert get_method("qlora").optimizer == "paged_adamw_8bit"
    assert get_method("full").default_lr < get_method("lora").default_lr
    with pytest.raises(InvalidInput, match=r"unknown training method 'lorra'.*freeze, full, lora"):
        get_method("lorra")
    with pytest.raises(ValueError, match="already registered"):
        register_method(
            "lora", config=FullConfig, load_kwargs=lambda c, d: {}, default_lr=1e-4, artifact="peft"
        )(lambda model, cfg: model)
    assert get_method("lora").config is LoraMethodConfig


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: LoraMethodConfig(rank=0), "--rank"),
        (lambda: LoraMethodConfig(alpha=0), "--alpha"),
        (lambda: LoraMethodConfig(dropout=1.0), "--dropout"),
        (lambda: LoraMethodConfig(base_bits=4), "--base-bits"),
        (lambda: LoraMethodConfig(target=" , "), "--target"),
        (lambda: QLoraConfig(rank=-2), "--rank"),
        (lambda: FreezeConfig(layers=0), "--layers"),
        (lambda: FreezeConfig(modules=("",)), "--modules"),
        (lambda: PTuningConfig(virtual_tokens=0), "--virtual-tokens"),
        (lambda: PTuningConfig(encoder="gru"), "--encoder"),
        (lambda: PTuningV2Config(virtual_tokens=-1), "--virtual-tokens"),
        (lambda: FullConfig(precision="fp8"), "--precision"),
        (lambda: get_method("lora").make_config({"rnak": 4}), "--rnak"),
        (lambda: TrainConfig(batch_size=0), "--batch-size"),
        (lambda: TrainConfig(lr=-1e-4), "--lr"),
        (lambda: TrainConfig(epochs=0), "--epochs"),
        (lambda: TrainConfig(grad_accum=0), "--grad-accum"),
        (lambda: TrainConfig(max_len=1), "--max-len"),
        (lambda: TrainConfig(save_total_limit=0), "--save-total-limit"),
        (lambda: TrainConfig(warmup_ratio=1.5), "--warmup-ratio"),
        (lambda: TrainConfig(scheduler="step"), "--scheduler"),
        (lambda: TrainConfig(optimizer="sgd"), "--optimizer"),
        (lambda: TrainConfig(max_steps=2.5), "--max-steps"),
        (lambda: TrainConfig.from_dict({"batchsize": 4}), "--batchsize"),
    ],
)
def test_config_errors_name_the_flag(make, flag):
    with pytest.raises(InvalidInput, match=flag):
        make()


def test_train_config_round_trips_and_takes_method_defaults():
    cfg = TrainConfig(epochs=2, batch_size=4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    resolved = cfg.with_method_defaults(get_method("qlora"))
    assert (resolved.lr, resolved.optimizer) == (2e-4, "paged_adamw_8bit")
    assert TrainConfig(lr=1e-3).with_method_defaults(get_method("full")).lr == 1e-3


def test_quantised_methods_refuse_a_machine_without_cuda(tiny_model_dir, rows, tmp_path):
    with pytest.raises(InvalidInput, match="--method qlora needs a CUDA GPU"):
        get_method("qlora").load_kwargs(QLoraConfig(), "cpu")
    with pytest.raises(InvalidInput, match="--base-bits 8 needs a CUDA GPU"):
        get_method("lora").load_kwargs(LoraMethodConfig(base_bits=8), "cpu")
    paths = TrainPaths(tmp_path / "ckpt")
    with pytest.raises(InvalidInput, match="needs a CUDA GPU"):
        run_cpu(tiny_model_dir, rows, "qlora", {}, TrainConfig(max_steps=1), paths)
    with pytest.raises(InvalidInput, match="needs a CUDA GPU"):
        run_cpu(tiny_model_dir, rows, "lora", {"base_bits": 8}, TrainConfig(max_steps=1), paths)
    with pytest.raises(InvalidInput, match="--optimizer paged_adamw_8bit needs a CUDA GPU"):
        run_cpu(
            tiny_model_dir, rows, "lora", {}, TrainConfig(max_steps=1, optimizer="paged_adamw_8bit"), paths
        )
    assert not paths.checkpoints.exists()


def test_find_blocks_is_generic(tiny_model_dir):
    assert find_blocks(load_base(tiny_model_dir))[0] == "model.layers"
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert find_blocks(gpt2)[0] == "transformer.h"
    model = get_method("freeze").prepare(gpt2, FreezeConfig(layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("transformer.h.2.", "transformer.ln_f.")) for n in trained)
    assert "transformer.ln_f.weight" in trained


FREEZE_CASES = [
    (FreezeConfig(), ("model.layers.1.", "model.norm.")),  # the default: the last quarter, at least 1 block
    (FreezeConfig(layers=2, train_norm=False), ("model.layers.",)),
    (FreezeConfig(modules="*.mlp.*"), ("model.layers.0.mlp.", "model.layers.1.mlp.")),
    (
        FreezeConfig(layers=1, modules=("model.embed_tokens.*",)),
        ("model.layers.1.", "model.norm.", "model.embed"),
    ),
]


@pytest.mark.parametrize(("cfg", "prefixes"), FREEZE_CASES)
def test_freeze_trains_exactly_the_selected_parameters(tiny_model_dir, cfg, prefixes):
    model = get_method("freeze").prepare(load_base(tiny_model_dir), cfg)
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith(prefixes), name


def test_freeze_refuses_impossible_selections(tiny_model_dir):
    with pytest.raises(InvalidInput, match="--layers 3 exceeds the 2 transformer blocks"):
        get_method("freeze").prepare(load_base(tiny_model_dir), FreezeConfig(layers=3))
    with pytest.raises(InvalidInput, match="--modules pattern '\\*.nothing' matches no parameter"):
        get_method("freeze").prepare(load_base(tiny_model_dir), FreezeConfig(modules="*.nothing"))


def test_lora_and_full_parameter_counts(tiny_model_dir):
    assert count_parameters(load_base(tiny_model_dir)).total == BASE_PARAMS
    lora = get_method("lora").prepare(load_base(tiny_model_dir), LoraMethodConfig(rank=8))
    # per block, r x (in + out) for q 64->64, k/v 64->32, o 64->64, gate/up 64->128, down 128->64
    per_block = 8 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert count_parameters(lora).trainable == 2 * per_block
    assert count_parameters(lora).total == BASE_PARAMS + 2 * per_block
    assert count_parameters(lora).trainable == lora.get_nb_trainable_parameters()[0]
    full = get_method("full").prepare(load_base(tiny_model_dir), FullConfig())
    assert count_parameters(full).trainable == count_parameters(full).total == BASE_PARAMS


CASES = [
    ("freeze", {}),
    ("ptuning", {"virtual_tokens": 4, "encoder_hidden": 16}),
    ("ptuning", {"virtual_tokens": 4, "encoder_hidden": 16, "encoder": "lstm"}),
    ("ptuning-v2", {"virtual_tokens": 4}),
    ("ptuning-v2", {"virtual_tokens": 4, "prefix_projection": True, "projection_hidden": 16}),
    ("lora", {}),
    ("lora", {"dora": True, "rank": 4}),
    ("full", {}),
]


@pytest.mark.parametrize(("method", "flags"), CASES, ids=[f"{m}{sorted(f)}" for m, f in CASES])
def test_method_trains_saves_reloads_and_generates(tiny_model_dir, rows, tmp_path, method, flags):
    cfg = TrainConfig(max_steps=3, batch_size=2, lr=1e-2, save_steps=100)
    model, result, counts = run_cpu(tiny_model_dir, rows, method, flags, cfg, TrainPaths(tmp_path / "ckpt"))
    assert result.steps == 3 and not result.stopped and all(loss == loss for loss in result.losses)
    assert 0 < counts.trainable <= counts.total
    assert (counts.trainable == counts.total) == (method == "full")

    tokenizer = load_tokenizer(tiny_model_dir)
    card = {
        "name": f"tiny-{method}",
        "base_model": "tiny-llama",
        "dataset": "faults@1",
        "metrics": {"f1": 0.5},
    }
    out = save_artifact(model, method, tmp_path / "artifact", tokenizer=tokenizer, card=card)
    files = {p.name for p in out.iterdir()}
    expected = {
        "peft": {"adapter_config.json", "adapter_model.safetensors"},
        "freeze": {"freeze_weights.safetensors", "freeze_manifest.json"},
        "full": {"config.json", "model.safetensors", "tokenizer.json"},
    }[get_method(method).artifact]
    assert expected | {"README.md", "ft_artifact.json"} <= files
    readme = (out / "README.md").read_text()
    assert "## Lineage" in readme and "faults@1" in readme and "| f1 | 0.5 |" in readme
    assert (
        json.loads((out / "ft_artifact.json").read_text())["card"]["parameters"]["trainable"]
        == counts.trainable
    )

    reloaded = load_for_inference(tiny_model_dir, out, method)
    base = load_base(tiny_model_dir).eval()
    ids = torch.tensor([rows[0]["input_ids"][:40]])
    with torch.no_grad():
        trained_logits, reloaded_logits = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    assert torch.allclose(trained_logits, reloaded_logits, atol=1e-5)
    assert not torch.allclose(
        reloaded_logits[:, -1], base_logits[:, -1], atol=1e-4
    )  # the training is in there
    generated = reloaded.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert generated.shape[1] > ids.shape[1]


@pytest.mark.parametrize("dora", [False, True])
def test_lora_merges_into_a_plain_model(tiny_model_dir, rows, tmp_path, dora):
    cfg = TrainConfig(max_steps=2, batch_size=4, lr=1e-2)
    model, _, _ = run_cpu(tiny_model_dir, rows, "lora", {"dora": dora}, cfg, TrainPaths(tmp_path / "c"))
    adapter = save_artifact(model, "lora", tmp_path / "adapter", card={"base_model": "tiny"})
    merged_dir = merge_to_dir(tiny_model_dir, adapter, tmp_path / "merged", dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.tensor([rows[1]["input_ids"][:32]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    assert (merged_dir / "tokenizer.json").is_file()
    with pytest.raises(InvalidInput, match="only lora/qlora"):
        merge_to_dir(tiny_model_dir, adapter, tmp_path / "nope", method="ptuning")
