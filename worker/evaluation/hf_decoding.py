"""transformers' `generate` as ft's second decoding engine: its configuration, and the inputs that make
prompt-learning adapters decode right on transformers 5.24 (worker/evaluation/generation.py runs it
where the graph loop of worker/evaluation/graph_decoding.py does not: on a CPU by default, and for a
streamer; the graph loop lays prompt-learning inputs out the same way)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from peft import PeftType
from transformers import GenerationConfig as HFGenerationConfig

from worker.evaluation.decoding import Decoding


def model_inputs(
    model: Any,
    kind: PeftType | None,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    pad_id: int,
    cache_kwarg: str,
) -> tuple[Callable[..., torch.Tensor], dict[str, Any], int]:
    """(the generate function, its inputs, how many leading columns of its output are the prompt).

    Prompt-learning adapters are fed to the base model's own `generate` here rather than through
    peft's `generate`: peft's hook decides "first step" by looking for `past_key_values` in the model
    kwargs, which transformers 5.24 renamed to `cache`, so with it peft re-injects the virtual tokens
    on every step (p-tuning, prompt tuning) or loses the prefix (prefix tuning). peft's path also
    drops position ids, so a left-padded row saw its prompt shifted by its padding. Here:
    - p-tuning / prompt tuning: the virtual-token embeddings are prepended to the prompt's and the
      base generates from embeddings (positions then follow the attention mask, as for a plain model);
    - prefix tuning: the trained key/value prefix is the initial cache, and the prompt is preceded by
      as many placeholder ids, which transformers treats as the cached part and skips, so the real
      tokens sit at positions P.. as in training.
    """
    if kind is None:
        return model.generate, {"input_ids": input_ids, "attention_mask": mask}, input_ids.shape[1]
    batch = input_ids.shape[0]
    if kind == PeftType.PREFIX_TUNING:
        cache = model.get_prompt(batch_size=batch)
        virtual = cache.get_seq_length()
        ones = torch.ones((batch, virtual), dtype=mask.dtype, device=mask.device)
        placeholders = torch.full_like(ones, pad_id, dtype=input_ids.dtype)
        inputs = {
            "input_ids": torch.cat((placeholders, input_ids), 1),
            "attention_mask": torch.cat((ones, mask), 1),
            cache_kwarg: cache,
        }
        return model.base_model.generate, inputs, virtual + input_ids.shape[1]
    embeds = model.word_embeddings(input_ids)
    prompt = model.get_prompt(batch_size=batch).to(embeds.dtype)
    ones = torch.ones(prompt.shape[:2], dtype=mask.dtype, device=mask.device)
    inputs = {
        "inputs_embeds": torch.cat((prompt, embeds), 1),
        "attention_mask": torch.cat((ones, mask), 1),
    }
    return model.base_model.generate, inputs, 0  # with embeddings only, the output is new tokens


PROMPT_LEARNING = (PeftType.P_TUNING, PeftType.PROMPT_TUNING, PeftType.PREFIX_TUNING)


def prompt_learning_type(model: Any) -> PeftType | None:
    """The peft type of the model's active adapter if it is a prompt-learning one, else None."""
    peft_config = getattr(model, "active_peft_config", None)
    kind = getattr(peft_config, "peft_type", None)
    return kind if kind in PROMPT_LEARNING else None


def cache_kwarg(model: Any) -> str:
    """The keyword the model's forward takes its KV cache by: `cache` since transformers 5.24,
    `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def hf_generation_config(
    cfg: Decoding, static_cache: bool, eos: list[int], pad_id: int
) -> HFGenerationConfig:
    """Every decoding setting explicit, so a checkpoint's generation_config.json (a repetition
    penalty, a default temperature) cannot change what evaluation measures."""
    sampling = (
        {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0}
        if cfg.sample
        else {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}
    )
    return HFGenerationConfig(
        max_new_tokens=cfg.max_new_tokens,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=eos or None,
        pad_token_id=pad_id,
        use_cache=True,
        **({"cache_implementation": "static"} if static_cache else {}),
        **sampling,
    )
