"""Loading a causal LM and its tokenizer, the same way for training, eval, data generation and RMs.

Everything a stage needs to turn a model reference into something it can run, in one place so
that the stages cannot drift apart:

- :func:`load_tokenizer` — the tokenizer, with the **pad-token fallback** (Llama-3.x and others
  ship without one: padding then reuses EOS; every pad position is masked, so nothing learns it);
- :func:`load_causal_lm` — dtype, attention implementation (``auto``: FlashAttention-2 when
  flash-attn and CUDA are there, else SDPA), ``trust_remote_code``; a folder that is not a model
  is one ``srmir: error`` line, not a traceback;
- :func:`eos_token_ids` — the **EOS set**: the union of the tokenizer's EOS, the model config's
  and the generation config's (Gemma-2-it lists its end-of-turn id 107 only in
  ``generation_config.json``; ignoring it lets a rollout run past the end of the turn);
- :func:`disable_dropout` — the policy trains with dropout off (TRL's ``disable_dropout``): with
  μ > 1 the old and the live log-probs must differ by the update, not by dropout noise, and the
  policy must be in train mode for gradient checkpointing to recompute anything.

Prompt encoding lives in :mod:`srmir.runtime.prompts`, the logit post-processing of some
families in :mod:`srmir.runtime.logits`.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import UserError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def attn_implementation(choice: str) -> Optional[str]:
    """``auto``: FlashAttention-2 when flash-attn is installed and CUDA is there, else None —
    transformers' own default for the family (SDPA where the family supports it; eager for
    Gemma-2, whose attention soft-capping SDPA cannot do)."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_tokenizer(path: str, trust_remote_code: bool = False, where: str = "model.policy"):
    """The tokenizer of ``path``, with ``pad_token`` falling back to the EOS token when it has none.
    An adapter folder without tokenizer files uses its base model's."""
    from transformers import AutoTokenizer

    from . import lora

    if lora.is_adapter_dir(path) and not any((Path(path) / f).is_file() for f in _TOKENIZER_FILES):
        path = lora.adapter_base(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"cannot load a tokenizer from {path!r}: {_first_line(e)}", where=where) from None
    set_pad_fallback(tok, where)
    return tok


def set_pad_fallback(tok, where: str = "model.policy") -> None:
    """Give a tokenizer without a pad token its EOS as pad (in place); UserError when it has neither."""
    if tok.pad_token_id is not None:
        return
    if tok.eos_token is None:
        raise UserError("the tokenizer has neither a pad nor an EOS token: batches cannot be padded", where=where)
    tok.pad_token = tok.eos_token


def load_causal_lm(path: str, dtype: str = "bf16", attn: str = "auto", trust_remote_code: bool = False,
                   where: str = "model.policy"):
    """``AutoModelForCausalLM.from_pretrained`` with srmir's choices, in eval mode; errors as UserError.
    An adapter folder (``adapter_config.json``) gives its base model with the adapter merged in."""
    from transformers import AutoModelForCausalLM

    from . import lora

    if lora.is_adapter_dir(path):
        return lora.load_merged(path, dtype, attn, trust_remote_code, where)
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn_implementation(attn),
                                                    trust_remote_code=trust_remote_code).eval()
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot load a causal LM from {path!r}: {_first_line(e)}", where=where) from None


def load_generation_config(path: str, trust_remote_code: bool = False):
    """The model's ``generation_config.json`` as a GenerationConfig, or None when it has none (an
    adapter folder: its base model's)."""
    from transformers import GenerationConfig

    from . import lora

    if lora.is_adapter_dir(path):
        path = lora.adapter_base(path)

    if Path(path).is_dir() and not (Path(path) / "generation_config.json").is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        return None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(i) for i in (value if isinstance(value, (list, tuple)) else [value]) if i is not None]


def eos_token_ids(tokenizer, model_config=None, generation_config=None) -> list[int]:
    """Every id that ends an answer: generation config, model config and tokenizer EOS, in that
    order, deduplicated. ValueError when there is none (generation could never stop)."""
    ids: list[int] = []
    for source in (getattr(generation_config, "eos_token_id", None), getattr(model_config, "eos_token_id", None),
                   tokenizer.eos_token_id):
        for i in _ids(source):
            if i not in ids:
                ids.append(i)
    if not ids:
        raise ValueError("the tokenizer, model config and generation config define no EOS token; "
                         "generation could not stop")
    return ids


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in ``model`` to 0 (modules and the float attributes that
    attention layers pass to functional dropout); returns how many were non-zero."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p != 0
            module.p = 0.0
        for name in _DROPOUT_ATTRS:
            value = getattr(module, name, None)
            if isinstance(value, float) and not isinstance(value, bool) and value != 0.0:
                setattr(module, name, 0.0)
                changed += 1
    return changed


# float attributes some HF attention/MLP modules read at forward time instead of an nn.Dropout
_DROPOUT_ATTRS = ("attention_dropout", "attn_dropout", "dropout", "hidden_dropout", "resid_dropout",
                  "dropout_rate", "attn_pdrop", "resid_pdrop", "embd_pdrop")


@dataclass
class CausalLM:
    """A loaded causal LM with everything the stages need to run it alike."""

    model: torch.nn.Module
    tokenizer: object
    eos_ids: list[int]
    pad_id: int
    path: str


def load_for_inference(path: str, dtype: str = "bf16", attn: str = "auto", trust_remote_code: bool = False,
                       where: str = "model.policy", device: Optional[torch.device | str] = None) -> CausalLM:
    """Tokenizer (pad fallback) + model (eval mode, on ``device``) + EOS set: what eval and data
    generation run."""
    tok = load_tokenizer(path, trust_remote_code, where)
    model = load_causal_lm(path, dtype, attn, trust_remote_code, where)
    if device is not None:
        model = model.to(device)
    try:
        eos = eos_token_ids(tok, model.config, getattr(model, "generation_config", None))
    except ValueError as e:
        raise UserError(str(e), where=where) from None
    return CausalLM(model, tok, eos, tok.pad_token_id, path)
