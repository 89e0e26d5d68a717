"""Every training method on the tiny real Llama: registry, flag validation, what each one trains,
its artifact saved, reloaded onto the base and generating. The quantised ones (qlora's 4-bit NF4 base,
lora --base-bits 8) train on the CPU through bitsandbytes' CPU backend, and are refused where
bitsandbytes cannot run."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from catalog.errors import InvalidInput
from datasets_prep.spec import ConvertSpec
from tests.worker.train_helpers import needs_bnb_cpu, run_cpu
from worker.methods import METHODS, get_method, register_method
from worker.methods.artifacts import PEFT
from worker.methods.freeze import FreezeConfig, find_blocks
from worker.methods.full import FullConfig
from worker.methods.lora import LoraMethodConfig
from worker.methods.ptuning import PTuningConfig
from worker.methods.ptuning_v2 import PTuningV2Config
from worker.methods.qlora import QLoraConfig
from worker.methods.saving import load_for_inference, merge_to_dir, save_artifact
from worker.models.loading import (
    bitsandbytes_cpu_problem,
    count_parameters,
    load_base,
    load_tokenizer,
    quantisation_problem,
)
from worker.train.config import TrainConfig
from worker.train.engine import TrainHooks, TrainPaths
from worker.train.optimization import build_optimizer

BASE_PARAMS = 139_584  # the tiny Llama: vocab 1024 x 64 (tied) + 2 blocks + final norm


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_every_method_and_refuses_duplicates():
    assert set(METHODS) == {"freeze", "ptuning", "ptuning-v2", "lora", "qlora", "full"}
    assert get_method("qlora").optimizer == "paged_adamw_8bit"
    assert get_method("full").default_lr < get_method("lora").default_lr
    with pytest.raises(InvalidInput, match=r"unknown training method 'lorra'.*freeze, full, lora"):
        get_method("lorra")
    with pytest.raises(ValueError, match="already registered"):
        register_method(
            "lora", config=FullConfig, load_kwargs=lambda c, d: {}, default_lr=1e-4, artifact=PEFT
        )(lambda model, cfg: model)
    with pytest.raises(TypeError, match="must be an ArtifactFormat"):
        register_method(
            "new", config=FullConfig, load_kwargs=lambda c, d: {}, default_lr=1e-4, artifact="peft"
        )
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
        (lambda: ConvertSpec(1, 1, 1, max_len=1), "--max-len"),
        (lambda: ConvertSpec(1, 1, 1, max_len=64, max_source_len=64), "--max-source-len"),
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
    cfg = TrainConfig(epochs=2, batch_size=4, grad_accum=1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    resolved = cfg.with_method_defaults(get_method("qlora"))
    assert (resolved.lr, resolved.optimizer, resolved.epochs) == (1e-3, "paged_adamw_8bit", 2)
    assert TrainConfig(lr=1e-3).with_method_defaults(get_method("full")).lr == 1e-3
    # unset epochs come from the method: the tuned recipes train prompt learning and freeze longer
    assert TrainConfig().with_method_defaults(get_method("freeze")).epochs == 8
    assert TrainConfig().with_method_defaults(get_method("lora")).epochs == 4
    assert TrainConfig().epochs is None and TrainConfig.from_dict(TrainConfig().to_dict()).epochs is None


def test_quantised_methods_are_refused_where_bitsandbytes_cannot_run(
    tiny_model_dir, rows, tmp_path, monkeypatch
):
    from transformers import BitsAndBytesConfig

    int8 = BitsAndBytesConfig(load_in_8bit=True)
    paths = TrainPaths(tmp_path / "ckpt")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` fails: not installed
        bitsandbytes_cpu_problem.cache_clear()
        try:
            missing = (
                "the bitsandbytes package is not installed on the worker: pip install 'bitsandbytes>=0.48'"
            )
            assert quantisation_problem("cpu") == missing
            with pytest.raises(InvalidInput, match=r"--method qlora needs bitsandbytes .* cannot run on cpu"):
                get_method("qlora").load_kwargs(QLoraConfig(), "cpu")
            with pytest.raises(InvalidInput, match=r"--base-bits 8 needs bitsandbytes .*not installed"):
                get_method("lora").load_kwargs(LoraMethodConfig(base_bits=8), "cpu")
            with pytest.raises(InvalidInput, match=r"Or use --method lora"):
                run_cpu(tiny_model_dir, rows, "qlora", {}, TrainConfig(max_steps=1), paths)
            with pytest.raises(InvalidInput, match=r"Or omit --base-bits"):
                run_cpu(tiny_model_dir, rows, "lora", {"base_bits": 8}, TrainConfig(max_steps=1), paths)
            with pytest.raises(InvalidInput, match="a quantised base model cannot be loaded on cpu"):
                load_base(tiny_model_dir, quantization_config=int8)
            cfg = TrainConfig(lr=1e-3, optimizer="paged_adamw_8bit")
            with pytest.raises(InvalidInput, match=r"--optimizer paged_adamw_8bit needs bitsandbytes.*adamw"):
                build_optimizer(nn.Linear(4, 4), cfg, torch.device("cpu"))
        finally:
            bitsandbytes_cpu_problem.cache_clear()
    assert not paths.checkpoints.exists()
    if not torch.cuda.is_available():
        assert quantisation_problem("cuda") == "this machine has no CUDA GPU"
        with pytest.raises(InvalidInput, match="cannot run on cuda here: this machine has no CUDA GPU"):
            get_method("qlora").load_kwargs(QLoraConfig(), "cuda")


def test_a_bitsandbytes_too_old_for_the_cpu_is_refused():
    bnb = pytest.importorskip("bitsandbytes")
    assert bitsandbytes_cpu_problem(min_version="99.0") == (
        f"bitsandbytes {bnb.__version__} cannot quantise on the CPU: pip install 'bitsandbytes>=99.0'"
    )


def test_find_blocks_is_generic(tiny_model_dir):
    assert find_blocks(load_base(tiny_model_dir))[0] == "model.layers"
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    assert find_blocks(gpt2)[0] == "transformer.h"
    model = get_method("freeze").prepare(gpt2, FreezeConfig(layers=1))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("transformer.h.2.", "transformer.ln_f.")) for n in trained)
    assert "transformer.ln_f.weight" in trained


FREEZE_CASES = [
    (FreezeConfig(), ("model.layers.1.", "model.norm.")),  # default: the last 53% (1 of 2)
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


def lora_params(rank: int) -> int:
    """Adapter parameters on all linear layers of the tiny Llama's 2 blocks: per block r x (in + out) for
    q 64->64, k/v 64->32, o 64->64, gate/up 64->128, down 128->64."""
    return 2 * rank * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)


def test_lora_and_full_parameter_counts(tiny_model_dir):
    assert count_parameters(load_base(tiny_model_dir)).total == BASE_PARAMS
    lora = get_method("lora").prepare(load_base(tiny_model_dir), LoraMethodConfig(rank=8))
    assert count_parameters(lora).trainable == lora_params(8)
    assert count_parameters(lora).total == BASE_PARAMS + lora_params(8)
    assert count_parameters(lora).trainable == lora.get_nb_trainable_parameters()[0]
    full = get_method("full").prepare(load_base(tiny_model_dir), FullConfig())
    assert count_parameters(full).trainable == count_parameters(full).total == BASE_PARAMS


@needs_bnb_cpu
@pytest.mark.parametrize(
    ("method", "cfg", "layer"),
    [("qlora", QLoraConfig(), "Linear4bit"), ("lora", LoraMethodConfig(base_bits=8), "Linear8bitLt")],
)
def test_quantised_bases_on_the_cpu_count_the_parameters_they_encode(tiny_model_dir, method, cfg, layer):
    spec = get_method(method)
    base = load_base(tiny_model_dir, "cpu", **spec.load_kwargs(cfg, "cpu"))
    quantised = [name for name, module in base.named_modules() if type(module).__name__ == layer]
    assert (
        len(quantised) == 2 * 7 and "lm_head" not in quantised
    )  # every block linear; head and embedding stay
    assert count_parameters(base).total == BASE_PARAMS
    model = spec.prepare(base, cfg)
    assert (
        count_parameters(model).trainable == lora_params(cfg.rank) == model.get_nb_trainable_parameters()[0]
    )
    assert count_parameters(model).total == BASE_PARAMS + lora_params(cfg.rank)


CASES = [
    ("freeze", {}),
    ("ptuning", {"virtual_tokens": 4, "encoder_hidden": 16}),
    ("ptuning", {"virtual_tokens": 4, "encoder_hidden": 16, "encoder": "lstm"}),
    ("ptuning-v2", {"virtual_tokens": 4}),
    ("ptuning-v2", {"virtual_tokens": 4, "prefix_projection": True, "projection_hidden": 16}),
    ("lora", {}),
    ("lora", {"dora": True, "rank": 4}),
    ("full", {}),
    pytest.param("qlora", {}, marks=needs_bnb_cpu),
    pytest.param("qlora", {"dora": True, "rank": 4}, marks=needs_bnb_cpu),
    pytest.param("lora", {"base_bits": 8}, marks=needs_bnb_cpu),
]


def _case_id(case) -> str:
    method, flags = case.values if hasattr(case, "values") else case
    return f"{method}{sorted(flags)}"


@pytest.mark.parametrize(("method", "flags"), CASES, ids=[_case_id(c) for c in CASES])
def test_method_trains_saves_reloads_and_generates(tiny_model_dir, rows, tmp_path, method, flags):
    cfg = TrainConfig(max_steps=3, batch_size=2, grad_accum=1, lr=1e-2, save_steps=100)
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
    }[get_method(method).artifact.kind]
    assert expected | {"README.md", "ft_artifact.json"} <= files
    readme = (out / "README.md").read_text()
    assert "## Lineage" in readme and "faults@1" in readme and "| f1 | 0.5 |" in readme
    assert (
        json.loads((out / "ft_artifact.json").read_text())["card"]["parameters"]["trainable"]
        == counts.trainable
    )

    # Loaded as training loaded it (4-bit / int8 included): exactly the trained model.
    reloaded = load_for_inference(tiny_model_dir, out, method, method_flags=flags)
    base = load_base(tiny_model_dir).eval()
    ids = torch.tensor([rows[0]["input_ids"][:40]])
    with torch.no_grad():
        trained_logits, reloaded_logits = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    assert torch.allclose(trained_logits, reloaded_logits, atol=1e-5)
    assert not torch.allclose(
        reloaded_logits[:, -1], base_logits[:, -1], atol=1e-4
    )  # the training is in there
    inference = [reloaded]
    if method == "qlora" or flags.get("base_bits"):
        # The default reload puts the adapter on the unquantised base: the trained model up to the base's
        # quantisation error, far closer to it than the base is.
        plain = load_for_inference(tiny_model_dir, out, method)
        assert not any("bitsandbytes" in type(m).__module__ for m in plain.modules())
        with torch.no_grad():
            plain_gap = (plain(input_ids=ids).logits - trained_logits).abs().max()
        assert plain_gap < 0.2 * (base_logits - trained_logits).abs().max()
        inference.append(plain)
    for generator in inference:
        generated = generator.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert generated.shape[1] > ids.shape[1]


@needs_bnb_cpu
def test_qlora_resumes_from_its_checkpoint_exactly(tiny_model_dir, rows, tmp_path):
    """The 8-bit optimizer's state goes through the checkpoint: a resumed run ends bit-identical."""

    def run(root, stop_after=None):
        seen: list[dict] = []
        hooks = TrainHooks(on_progress=seen.append, should_stop=lambda: len(seen) == stop_after)
        cfg = TrainConfig(max_steps=4, batch_size=2, grad_accum=1, lr=1e-2, save_steps=2)
        return run_cpu(tiny_model_dir, rows, "qlora", {"dropout": 0.1}, cfg, TrainPaths(root), hooks)

    straight, straight_result, _ = run(tmp_path / "straight")
    _, first, _ = run(tmp_path / "broken", stop_after=3)
    assert first.stopped and first.steps == 3
    resumed, second, _ = run(tmp_path / "broken")
    assert second.resumed_from == 2 and second.losses == straight_result.losses
    trained = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    assert trained and all(
        torch.equal(p, trained[n]) for n, p in resumed.named_parameters() if p.requires_grad
    )


@pytest.mark.parametrize("dora", [False, True])
def test_lora_merges_into_a_plain_model(tiny_model_dir, rows, tmp_path, dora):
    cfg = TrainConfig(max_steps=2, batch_size=4, grad_accum=1, lr=1e-2)
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
