"""Stacked LoRA (worker/evaluation/multi_lora.py) on the tiny real Llama, CPU, fp32: three LoRA adapters of
different
ranks, alphas and targets (one rsLoRA) and the untuned base in one stacked pass give each model's own
greedy texts and logits through plain peft; batches hold the same prompts for every model; the work per
layer does not grow with the number of adapters; the base comes back exactly; unstackable adapters are
refused and, in an eval job, evaluated on their own with the same results as alone.

The adapters are saved from peft with random (non-zero) weights, as `init_lora_weights=False` makes them:
the arithmetic is what is tested, and rsLoRA is a peft flag the `lora` method does not expose. The eval
job test trains its adapters through the job runner.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.worker.eval_helpers import evaluate, register_faults, train
from worker.evaluation.generation import GenerationConfig, generate
from worker.evaluation.multi_lora import (
    BASE,
    StackedLoRALinear,
    adapter_rows,
    stacked_lora,
    unstackable_reason,
)

STACKABLE = {  # name: peft config; ranks, alphas and target modules differ
    "r2": LoraConfig(r=2, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    "r4-rslora": LoraConfig(
        r=4, lora_alpha=4, use_rslora=True, target_modules="all-linear", init_lora_weights=False
    ),
    "r8-qv": LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
}
UNSTACKABLE = {  # name: (peft config, what the reason says)
    "dora": (
        LoraConfig(r=4, use_dora=True, target_modules=["o_proj", "down_proj"], init_lora_weights=False),
        "DoRA",
    ),
    "embedding": (
        LoraConfig(r=4, target_modules=["embed_tokens", "q_proj"], init_lora_weights=False),
        "Embedding",
    ),
    "modules-to-save": (
        LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"], init_lora_weights=False),
        "modules_to_save",
    ),
    "bias": (LoraConfig(r=4, target_modules=["q_proj"], bias="all", init_lora_weights=False), "bias"),
}
PROMPTS = [
    "发动机漏油 故障 检测",
    "hello world this is a much longer prompt with many tokens in it",
    "x_y z",
    "类型#上衣*材质#牛仔布*风格#简约",
    "Below is an instruction",
]
CFG = GenerationConfig(max_new_tokens=12, batch_size=2)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def shaken(model_dir) -> torch.nn.Module:
    """The tiny model with its matrices shaken: freshly initialised it echoes its last token, which would
    hide a wrong adapter; shaken, every model and prompt decode differently."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_dir, tmp_path_factory):
    """Every adapter above saved as an ordinary peft adapter directory."""
    root = tmp_path_factory.mktemp("adapters")
    configs = {**STACKABLE, **{name: cfg for name, (cfg, _) in UNSTACKABLE.items()}}
    for seed, (name, cfg) in enumerate(configs.items()):
        torch.manual_seed(seed)
        get_peft_model(shaken(tiny_model_dir), cfg).save_pretrained(root / name)
    return {name: root / name for name in configs}


def load(tiny_model_dir, adapter_dirs, names: list[str]) -> PeftModel:
    """The shaken base with `names` loaded the eval job's way; the first is the active one."""
    peft = PeftModel.from_pretrained(shaken(tiny_model_dir), adapter_dirs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(adapter_dirs[name], adapter_name=name)
    return peft.eval()


def alone(peft: PeftModel, tok, name: str) -> list[str]:
    """`name`'s texts through plain peft (BASE: with the adapters disabled)."""
    if name == BASE:
        with peft.disable_adapter():
            return generate(peft, tok, PROMPTS, CFG).texts
    peft.set_adapter(name)
    return generate(peft, tok, PROMPTS, CFG).texts


def together(model, tok, models: list[str]) -> dict[str, list[str]]:
    """Each of `models`' texts from one stacked pass over PROMPTS x models."""
    rows = [m for m in models for _ in PROMPTS]
    texts = generate(model, tok, PROMPTS * len(models), CFG, adapter_names=rows).texts
    return {m: texts[k * len(PROMPTS) : (k + 1) * len(PROMPTS)] for k, m in enumerate(models)}


def left_padded(tok, prompts: list[str]) -> dict[str, torch.Tensor]:
    """One forward pass's inputs, left-padded as generation pads them."""
    side, tok.padding_side = tok.padding_side, "left"
    try:
        return tok(prompts, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = side


# ---------------------------------------------------------------- equivalence


def test_one_stacked_pass_equals_each_model_alone(tiny_model_dir, adapter_dirs, tok):
    names = list(STACKABLE)
    peft = load(tiny_model_dir, adapter_dirs, names)
    expected = {name: alone(peft, tok, name) for name in [*names, BASE]}
    assert (
        len({tuple(texts) for texts in expected.values()}) == 4
    )  # four different models: the test has teeth

    with stacked_lora(peft, names) as model:
        assert sum(isinstance(m, StackedLoRALinear) for m in model.modules()) == 2 * 7  # 2 layers x 7 linears
        got = together(model, tok, [*names, BASE])
        assert got == expected
        # the rows in another order and two models only: each row still gets its own adapter
        assert together(model, tok, [BASE, "r8-qv"]) == {BASE: expected[BASE], "r8-qv": expected["r8-qv"]}
        # one adapter alone on the stack (no mask needed): its own texts
        assert together(model, tok, ["r4-rslora"]) == {"r4-rslora": expected["r4-rslora"]}


def test_logits_of_mixed_rows_match_peft(tiny_model_dir, adapter_dirs, tok):
    names = list(STACKABLE)
    peft = load(tiny_model_dir, adapter_dirs, names)
    row_names = ["r8-qv", BASE, "r2", "r4-rslora", "r2"]
    enc = left_padded(tok, PROMPTS)
    with torch.inference_mode():
        expected = []
        for i, name in enumerate(row_names):
            if name == BASE:
                with peft.disable_adapter():
                    expected.append(peft(**enc).logits[i])
            else:
                peft.set_adapter(name)
                expected.append(peft(**enc).logits[i])
        with stacked_lora(peft, names) as model, adapter_rows(model).select(row_names):
            logits = model(**enc).logits
    torch.testing.assert_close(logits, torch.stack(expected), rtol=1e-5, atol=1e-5)
    # and the adapters do move the logits, far beyond that tolerance
    assert (expected[0] - expected[1]).abs().max() > 0.1


def test_a_batch_holds_the_same_prompts_for_every_model(tiny_model_dir, adapter_dirs, tok):
    names = list(STACKABLE)
    peft = load(tiny_model_dir, adapter_dirs, names)
    models = [*names, BASE]
    prefills: list[list[tuple[int, ...]]] = []

    def record(module, args):
        ids = args[0]
        if ids.shape[1] > 1:  # the prompt pass of a batch (every prompt has 2+ tokens), not a decoding step
            prefills.append([tuple(t for t in row.tolist() if t != tok.pad_token_id) for row in ids])

    progress: list[int] = []
    with stacked_lora(peft, names) as model:
        hook = model.get_input_embeddings().register_forward_pre_hook(record)
        rows = [m for m in models for _ in PROMPTS]
        generate(
            model, tok, PROMPTS * 4, CFG, adapter_names=rows, on_progress=lambda p: progress.append(p["done"])
        )
        hook.remove()
    assert progress == [8, 16, 20]  # --batch-size 2 prompts x 4 models per batch
    assert [len(batch) for batch in prefills] == [8, 8, 4]
    for batch in prefills:
        assert set(Counter(batch).values()) == {4}  # each prompt of the batch once per model
    assert {row for batch in prefills for row in batch} == {tuple(tok(p)["input_ids"]) for p in PROMPTS}


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_the_work_per_forward_does_not_grow_with_the_adapters(tiny_model_dir, adapter_dirs, tok):
    """Counted as dispatched aten ops (each a kernel on a GPU) of one forward pass: stacking three
    adapters and the base costs what one adapter and the base cost; peft's mixed batches loop."""
    enc = left_padded(tok, PROMPTS[:4])

    def ops(names: list[str], row_names: list[str]) -> int:
        peft = load(tiny_model_dir, adapter_dirs, names)
        with (
            torch.inference_mode(),
            stacked_lora(peft, names) as model,
            adapter_rows(model).select(row_names),
        ):
            with _CountOps() as counter:
                model(**enc)
        return counter.ops

    def peft_ops(names: list[str], row_names: list[str]) -> int:
        peft = load(tiny_model_dir, adapter_dirs, names)
        with torch.inference_mode(), _CountOps() as counter:
            peft(**enc, adapter_names=row_names)
        return counter.ops

    one = ops(["r2"], ["r2", BASE, "r2", BASE])
    assert ops(["r2", "r4-rslora", "r8-qv"], ["r2", BASE, "r4-rslora", "r8-qv"]) == one
    assert peft_ops(["r2", "r4-rslora", "r8-qv"], ["r2", BASE, "r4-rslora", "r2"]) > peft_ops(
        ["r2"], ["r2", BASE, "r2", BASE]
    )


# ---------------------------------------------------------------- restoring the base


def test_the_base_comes_back_exactly(tiny_model_dir, adapter_dirs, tok):
    base = shaken(tiny_model_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    names = list(STACKABLE)
    peft = PeftModel.from_pretrained(base, adapter_dirs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(adapter_dirs[name], adapter_name=name)
    peft.eval()
    layers = [n for n, m in peft.named_modules() if isinstance(m, BaseTunerLayer)]
    enc = left_padded(tok, PROMPTS)
    with torch.inference_mode():
        peft.set_adapter("r4-rslora")
        adapted = peft(**enc).logits

    with stacked_lora(peft, names) as model:
        assert model is base
        together(model, tok, [*names, BASE])
    with pytest.raises(RuntimeError, match="boom"), stacked_lora(peft, names):
        raise RuntimeError("boom")  # an error inside restores too

    assert not any(isinstance(m, StackedLoRALinear) for m in peft.modules())
    assert [n for n, m in peft.named_modules() if isinstance(m, BaseTunerLayer)] == layers
    with torch.inference_mode():
        assert torch.equal(peft(**enc).logits, adapted)  # peft works as before, adapters enabled again
    plain = peft.unload()
    assert plain is base
    assert not any(isinstance(m, BaseTunerLayer | StackedLoRALinear) for m in plain.modules())
    after = plain.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    with torch.inference_mode():
        fresh = shaken(tiny_model_dir)
        assert torch.equal(plain(**enc).logits, fresh(**enc).logits)


def test_a_stacked_model_refuses_rows_without_names(tiny_model_dir, adapter_dirs, tok):
    peft = load(tiny_model_dir, adapter_dirs, ["r2"])
    with stacked_lora(peft, ["r2"]) as model:
        with pytest.raises(RuntimeError, match="needs its rows' adapters"):
            model(**left_padded(tok, PROMPTS[:2]))
        with pytest.raises(ValueError, match="not stacked"), adapter_rows(model).select(["r2", "nope"]):
            pass
        with pytest.raises(ValueError, match="adapter names for"):
            generate(model, tok, PROMPTS, CFG, adapter_names=["r2"])
    with pytest.raises(ValueError, match="need a stacked LoRA model"):
        generate(peft, tok, PROMPTS, CFG, adapter_names=["r2"] * len(PROMPTS))


# ---------------------------------------------------------------- what does not stack


@pytest.mark.parametrize("name", list(UNSTACKABLE))
def test_unstackable_adapters_say_why_and_are_refused(tiny_model_dir, adapter_dirs, name):
    peft = load(tiny_model_dir, adapter_dirs, [name, "r2"])
    assert unstackable_reason(peft, "r2") is None
    reason = unstackable_reason(peft, name)
    assert reason is not None and UNSTACKABLE[name][1] in reason
    with pytest.raises(ValueError, match=f"adapter '{name}' cannot be stacked"):
        with stacked_lora(peft, [name, "r2"]):
            pass
    assert not any(isinstance(m, StackedLoRALinear) for m in peft.modules())


def test_layers_left_to_peft_act_as_the_base_while_stacked(tiny_model_dir, adapter_dirs, tok):
    """The active adapter is a DoRA one on o_proj/down_proj, layers no stacked adapter touches: stacked
    rows must not get it, and it works again afterwards."""
    peft = load(tiny_model_dir, adapter_dirs, ["dora", "r8-qv"])
    expected = {name: alone(peft, tok, name) for name in ["r8-qv", BASE, "dora"]}
    peft.set_adapter("dora")
    with stacked_lora(peft, ["r8-qv"]) as model:
        assert together(model, tok, ["r8-qv", BASE]) == {n: expected[n] for n in ["r8-qv", BASE]}
    assert alone(peft, tok, "dora") == expected["dora"] != expected[BASE]


# ---------------------------------------------------------------- in an eval job


@pytest.fixture
def evaluable(catalog, store, lively_model_dir, tmp_path):
    return register_faults(catalog, store, lively_model_dir, tmp_path)


def test_an_eval_job_stacks_lora_and_evaluates_dora_alone(evaluable, settings, store):
    adapters = {  # ranks and alphas differ; DoRA cannot stack
        "s-lora-r2": ("lora", {"rank": 2, "alpha": 64}, {"lr": 3e-3}),
        "s-lora-r8": ("lora", {"rank": 8, "alpha": 16, "target": "q_proj,v_proj,down_proj"}, {"lr": 1e-2}),
        "s-dora": ("lora", {"rank": 4, "dora": True}, {"lr": 1e-2}),
    }
    for name, (method, flags, overrides) in adapters.items():
        train(evaluable, settings, store, name, method, flags, **overrides)
    job = evaluate(evaluable, settings, store, adapters=list(adapters), bases=["tiny"])
    log = open(job.log_path, encoding="utf-8").read()
    assert "s-dora is evaluated on its own, not stacked with other LoRA adapters: DoRA" in log
    assert job.result["shared_batches"] == ["s-lora-r2", "s-lora-r8", "tiny (untuned)"]
    texts = _predictions(evaluable, store, job)
    assert len({tuple(t) for t in texts.values()}) == 4

    for name in ["tiny (untuned)", *adapters]:
        request = (
            {"bases": ["tiny"], "template": "plain"} if name == "tiny (untuned)" else {"adapters": [name]}
        )
        single = evaluate(evaluable, settings, store, **request)
        assert "shared_batches" not in single.result
        assert _predictions(evaluable, store, single) == {name: texts[name]}, name

    # The case an H200 quality run failed on: the only adapter cannot stack, so the untuned base is
    # evaluated with its LoRA layers switched off, not in a stacked pass.
    alone = evaluate(evaluable, settings, store, adapters=["s-dora"], bases=["tiny"])
    assert "shared_batches" not in alone.result
    wanted = {k: texts[k] for k in ["s-dora", "tiny (untuned)"]}
    assert _predictions(evaluable, store, alone) == wanted


def _predictions(catalog, store, job) -> dict[str, list[str]]:
    """Each evaluated model's predictions, by the label the job reported."""
    from catalog.models import Evaluation

    found = {}
    with catalog.session() as s:
        for e in job.result["evaluations"]:
            ev = s.get_one(Evaluation, e["id"])
            path = store.path(ev.predictions_uri) / "predictions.jsonl"
            found[e["model"]] = [json.loads(line)["prediction"] for line in path.read_text().splitlines()]
    return found
