"""The model runtime beneath every stage: one way to load, encode, stop and distribute.

- :mod:`.model` — tokenizer (pad fallback), causal LM (dtype, attention, remote code), the EOS set,
  dropout off for training;
- :mod:`.prompts` — :class:`PromptEncoder`: chat template or not, special tokens, truncation that
  keeps the end of the request;
- :mod:`.logits` — post-``lm_head`` logit transforms (scale, soft-cap): read, folded into the
  fused log-probs, verified at setup;
- :mod:`.lora` — LoRA adapters (peft): wrapping, the output head through peft's wrappers, the
  reference with adapters off, adapter folders saved and loaded;
- :mod:`.dist` — launcher environment, process group, rank helpers, barriers and gathers.

The trainer, ``srmir eval``, ``srmir data build`` and reward training all go through these, so a
prompt becomes the same token ids, and an answer ends at the same token, everywhere.
"""
from . import lora
from .logits import LogitTransform, logit_transform, neutral_logits
from .model import (
    DTYPES, CausalLM, attn_implementation, disable_dropout, eos_token_ids, load_causal_lm, load_for_inference,
    load_generation_config, load_tokenizer, set_pad_fallback,
)
from .prompts import PromptEncoder

__all__ = [
    "DTYPES", "CausalLM", "lora", "LogitTransform", "PromptEncoder", "attn_implementation", "disable_dropout",
    "eos_token_ids", "load_causal_lm", "load_for_inference", "load_generation_config", "load_tokenizer",
    "logit_transform", "neutral_logits", "set_pad_fallback",
]
