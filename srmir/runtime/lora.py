"""LoRA adapters through ``peft``: wrap a model, find its output head, switch the adapters off,
save and load adapter folders — one home for training, reward models and ``srmir eval``.

Why the reference comes for free: with LoRA the base weights never change, so the frozen
reference of the KL penalty is the policy itself with its adapters switched off
(:func:`adapters_disabled`, peft's ``disable_adapter``). No second model is loaded, and under
ZeRO-3 the reference pass is an ordinary forward of the same engine: each module's shards are
gathered once by the engine's own hooks, the adapters' not at all.

The output head. srmir computes log-probs inside the head module's forward
(``srmir.trainer.logprobs.fused_head`` reads ``weight`` and replaces ``forward``), so it needs
the plain ``Linear`` that actually produces the logits. peft may put a wrapper around it:
``modules_to_save=["lm_head"]`` (trained fully: a ``ModulesToSaveWrapper`` that calls a trained
copy, or the original when the adapters are off — :func:`output_head` picks the one in use);
a LoRA *target* head (``base + B·A``) is not one matrix, so it is refused at setup.

``peft`` is an optional extra (``pip install 'srmir[lora]'``); asking for LoRA without it is one
``srmir: error`` line naming the extra.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# Attention and MLP projections per model type: what LoRA adapts by default. The decoder families
# of the conformance matrix share Llama's names; others fall back to peft's "all-linear" (every
# Linear but the output head).
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS = {
    **{t: _LLAMA_LIKE for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma",
                                "gemma2", "gemma3_text", "granite", "granitemoe", "cohere", "cohere2", "olmo",
                                "olmo2", "smollm3")},
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
}


def require_peft(where: str = "model.lora"):
    """The ``peft`` module, or a UserError naming the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise UserError("LoRA needs the package 'peft': pip install 'srmir[lora]'", where=where) from None
    return peft


def default_targets(model_type: Optional[str]):
    """The module names LoRA adapts for this model type (``"all-linear"`` when the type is not listed)."""
    return list(DEFAULT_TARGETS.get(model_type or "", [])) or "all-linear"


def wrap(model: torch.nn.Module, *, rank: int, alpha: float, dropout: float,
         target_modules: Optional[Sequence[str]] = None, modules_to_save: Sequence[str] = (),
         layers: Optional[Sequence[int]] = None, base_reference: Optional[str] = None,
         where: str = "model.lora"):
    """``model`` with LoRA adapters (peft ``get_peft_model``): every base weight frozen, the
    adapters (B = 0 at the start, so the model computes exactly what it did) and the
    ``modules_to_save`` trainable. ``target_modules`` None takes the family default; ``layers``
    restricts the adapters to those block indices. ``base_reference`` is recorded in the adapter
    config as ``base_model_name_or_path`` (what an adapter folder is loaded on top of)."""
    peft = require_peft(where)
    config = getattr(model, "config", None)
    targets = list(target_modules) if target_modules else default_targets(getattr(config, "model_type", None))
    if targets != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        missing = [t for t in targets if t not in names]
        if missing:
            raise UserError(f"no Linear module named {', '.join(missing)} in this {type(model).__name__} "
                            f"(Linear names: {', '.join(sorted(names)[:12])}…)", where=f"{where}.target_modules")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and targets != "all-linear":
        head_name = next(n for n, m in model.named_modules() if m is head).rsplit(".", 1)[-1]
        if head_name in targets:
            raise UserError(f"{head_name!r} (the output head) cannot be a LoRA target: srmir's fused log-probs need "
                            f"one head matrix; train it fully with modules_to_save: [{head_name}]",
                            where=f"{where}.target_modules")
    lora_config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                  modules_to_save=list(modules_to_save) or None, bias="none",
                                  layers_to_transform=list(layers) if layers is not None else None,
                                  task_type="CAUSAL_LM" if head is not None else None)
    try:
        wrapped = peft.get_peft_model(model, lora_config, autocast_adapter_dtype=False)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"peft cannot add the adapters: {str(e).strip().splitlines()[0]}", where=where) from None
    if base_reference is not None:
        wrapped.peft_config["default"].base_model_name_or_path = base_reference
    return wrapped


def is_peft(model) -> bool:
    """True for a peft-wrapped model (or a DeepSpeed engine around one)."""
    return hasattr(getattr(model, "module", model), "peft_config")


def hf_model(model) -> torch.nn.Module:
    """The transformers model inside a DeepSpeed engine and/or a peft wrapper (its LoRA layers
    injected in place, so calling it runs the adapters)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "peft_config") else model


def output_head(model) -> torch.nn.Module:
    """The module that computes the logits *now*: the model's output embeddings, or inside peft's
    ``modules_to_save`` wrapper the trained copy (adapters on) or the original (adapters off)."""
    head = hf_model(model).get_output_embeddings()
    if hasattr(head, "original_module") and hasattr(head, "modules_to_save"):  # peft's ModulesToSaveWrapper
        if head.disable_adapters or not head.active_adapters:
            return head.original_module
        return head.modules_to_save[head.active_adapters[0]]
    if not hasattr(head, "weight") or hasattr(head, "base_layer"):  # a LoRA layer around the head
        raise UserError("the output head is wrapped by a LoRA layer; srmir's fused log-probs need one head matrix "
                        "(train it fully with modules_to_save instead)", where="model.lora.target_modules")
    return head


@contextlib.contextmanager
def adapters_disabled(model):
    """Within the block the model computes its base weights' outputs (peft ``disable_adapter``):
    the KL reference without a second model. A no-op for a model without adapters."""
    module = getattr(model, "module", model)
    if not hasattr(module, "disable_adapter"):
        yield
        return
    with module.disable_adapter():
        yield


@contextlib.contextmanager
def merged_for_generation(model):
    """Within the block every LoRA layer computes ``(W + s·B·A) x`` with one matmul: each adapted
    base weight points at a temporary merged copy and the layer's adapter path is off. The base
    weights' own tensors are never written (they are put back untouched on exit, so the frozen base
    stays bit-identical — unlike peft's merge/unmerge, which would round bf16 weights twice).

    Why: decoding runs one token at a time, and unmerged adapters add two small matmuls to every
    adapted projection for every token (SmolLM2 has 210 of them; its rollout in the LoRA benchmark
    took 3.1–3.6 s unmerged, 2.6–2.8 s merged: ``docs/benchmarks.md``). The sampled distribution
    is the adapted model's up to the rounding of the merged weights, as with any inference engine
    fed merged weights; the log-probs that are trained come from the unmerged model. Costs a copy
    of the adapted weights while generating. Call it where every weight is whole (ZeRO-3: inside
    the rollout's gather). A no-op without adapters."""
    if not is_peft(model):
        yield
        return
    module = hf_model(model)
    layers = [m for m in module.modules() if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")
              and not getattr(m, "merged", False) and not getattr(m, "disable_adapters", True)]
    swapped = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
                swapped.append((layer, weight, weight.data))
                weight.data = weight.data + delta.to(weight.dtype)  # a new tensor; the original is kept
                layer.enable_adapters(False)
        yield
    finally:
        for layer, weight, original in reversed(swapped):
            weight.data = original
            layer.enable_adapters(True)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the trainable parameters (adapters and modules_to_save), cloned on the
    CPU; under ZeRO-3 they are gathered first (a collective: every rank calls it) — only these, never
    the frozen base."""
    module = getattr(model, "module", model)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        return {n: p.detach().to("cpu", copy=True) for n, p in named}


def save_adapter(model, state: dict[str, torch.Tensor], folder: Path) -> None:
    """``adapter_model.safetensors`` + ``adapter_config.json`` of ``model``'s adapter, from ``state``
    (:func:`trainable_state`): a folder ``peft`` loads onto the base model."""
    module = getattr(model, "module", model)
    peft = require_peft()
    # keys as peft's own state dict names them (the adapter name dropped); embeddings only if adapted
    adapter = peft.get_peft_model_state_dict(module, state_dict=state, save_embedding_layers=False)
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(folder / ADAPTER_WEIGHTS[0]),
              metadata={"format": "pt"})
    config = copy.copy(module.peft_config["default"])
    config.inference_mode = True  # as peft saves it: loaded for inference unless asked otherwise
    config.save_pretrained(str(folder))


def merged_copy(model, state: dict[str, torch.Tensor], base_path: str, *, dtype: str, attn: str,
                trust_remote_code: bool) -> torch.nn.Module:
    """A plain transformers model: the base loaded afresh on the CPU, the adapter ``state`` put on
    it and merged into the weights (``merge_and_unload``). Only the adapter was gathered, never the
    sharded base; a head trained fully is untied from the embeddings in the config."""
    from .model import load_causal_lm

    peft = require_peft()
    module = getattr(model, "module", model)
    config = module.peft_config["default"]
    base = load_causal_lm(base_path, dtype, attn, trust_remote_code, where="model.policy")
    adapted = peft.get_peft_model(base, config, autocast_adapter_dtype=False)
    names = dict(adapted.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            names[name].copy_(value)
    merged = adapted.merge_and_unload()
    head, embed = merged.get_output_embeddings(), merged.get_input_embeddings()
    if head is not None and embed is not None and head.weight is not embed.weight:
        merged.config.tie_word_embeddings = False
    return merged


# --------------------------------------------------------------------------- adapter folders


def is_adapter_dir(path) -> bool:
    """A local folder holding a peft adapter (``adapter_config.json``) rather than a whole model."""
    p = Path(os.path.expanduser(str(path)))
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def adapter_config(path) -> dict:
    """The adapter's JSON config (UserError naming the file when unreadable)."""
    file = Path(os.path.expanduser(str(path))) / ADAPTER_CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable adapter config ({type(e).__name__}: {e})", where=str(file)) from None
    if not isinstance(config, dict):
        raise UserError("expected a JSON object", where=str(file))
    return config


def adapter_base(path) -> str:
    """The base model the adapter at ``path`` goes on: its ``base_model_name_or_path``, resolved as
    any model reference (a local folder, an ``embedded:`` name, a hub id found offline)."""
    from ..models import resolve_model

    base = adapter_config(path).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UserError("adapter_config.json names no base_model_name_or_path: srmir cannot tell which model "
                        "the adapter belongs to", where=str(Path(path) / ADAPTER_CONFIG))
    if is_adapter_dir(base):
        raise UserError(f"its base {base} is an adapter folder itself; name the base model", where=str(path))
    return resolve_model(base)


def load_merged(path: str, dtype: str, attn: Optional[str], trust_remote_code: bool, where: str) -> torch.nn.Module:
    """The base model with the adapter at ``path`` merged in (eval mode): what ``srmir eval``
    generates with, as fast as the merged folder would be."""
    from .model import load_causal_lm

    peft = require_peft(where)
    base = load_causal_lm(adapter_base(path), dtype, attn, trust_remote_code, where=where)
    try:
        adapted = peft.PeftModel.from_pretrained(base, path, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot load the adapter onto {adapter_base(path)}: {str(e).strip().splitlines()[0]}",
                        where=where) from None
    return adapted.merge_and_unload().eval()
