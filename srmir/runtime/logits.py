"""Logit post-processing after ``lm_head``: read it, fold it into the fused log-probs, verify it.

srmir computes log-probs inside ``lm_head`` (``srmir.trainer.logprobs.fused_head``): the head
returns log-probs instead of logits. Some families transform the logits *after* the head —

    Granite (and its MoE variants)   logits / config.logits_scaling
    Cohere, Cohere-2                 logits * logit_scale
    Gemma-2, Gemma-3, ...            cap · tanh(logits / cap),  cap = config.final_logit_softcapping

— and would apply that transform to our log-probs (|Δ log-prob| up to 4 for Granite at scaling 8).
So for the duration of a log-prob pass the transform is switched off in the model
(:func:`neutral_logits`) and applied by the kernels instead: a scale folds into the temperature
(softmax(s·z/T) = softmax(z/(T/s))), a soft-cap is an argument of the kernels.

A transform srmir does not know must never give silently wrong numbers: :func:`verify` runs the
model once on a few tokens at setup and checks that (a) the model's logits equal the known
transform of the raw head output, and (b) with :func:`neutral_logits` the model returns the raw
head output untouched. Either failing is a one-line error naming the model type.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import UserError
from .lora import hf_model


@dataclass(frozen=True)
class LogitTransform:
    """logits = cap(scale · head(h)) with cap(x) = softcap · tanh(x / softcap) (None: no cap)."""

    scale: float = 1.0
    softcap: Optional[float] = None

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def temperature(self, temperature: float) -> float:
        """The kernel temperature that folds the scale in: softmax(s·z / T) = softmax(z / (T/s))."""
        return temperature / self.scale

    def apply(self, raw: torch.Tensor) -> torch.Tensor:
        """The model's logits from the raw head output (fp32)."""
        out = raw.float() * self.scale
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


# config attribute → (kind, value that switches it off). Order of application: scales, then the cap.
_KNOWN = {
    "logits_scaling": ("divide", 1.0),  # Granite: logits / logits_scaling
    "logit_scale": ("multiply", 1.0),  # Cohere: logits * logit_scale
    "output_multiplier": ("multiply", 1.0),
    "final_logit_softcapping": ("softcap", None),  # Gemma-2/3: cap · tanh(logits / cap)
}


def logit_transform(model_or_config) -> LogitTransform:
    """The post-head transform a model's config declares."""
    config = getattr(hf_model(model_or_config), "config", model_or_config)
    scale, softcap = 1.0, None
    for name, (kind, _) in _KNOWN.items():
        value = getattr(config, name, None)
        if value is None or isinstance(value, bool):
            continue
        value = float(value)
        if kind == "divide":
            scale /= value
        elif kind == "multiply":
            scale *= value
        elif value > 0:
            softcap = value
    return LogitTransform(scale, softcap)


@contextlib.contextmanager
def neutral_logits(model):
    """Switch the known post-head transforms off (config and module attributes), restore on exit."""
    hf = hf_model(model)
    saved = []
    for name, (_, off) in _KNOWN.items():
        for holder in (getattr(hf, "config", None), hf):
            if holder is not None and name in vars(holder) and getattr(holder, name) is not None:
                saved.append((holder, name, getattr(holder, name)))
                setattr(holder, name, off)
    try:
        yield
    finally:
        for holder, name, value in reversed(saved):
            setattr(holder, name, value)


@torch.no_grad()
def verify(model, lm_head: torch.nn.Module, transform: LogitTransform, device, vocab_size: Optional[int] = None,
           where: str = "model.policy") -> None:
    """Run ``model`` on a few tokens and check that its logits are ``transform`` of the raw
    ``lm_head`` output, and raw under :func:`neutral_logits` (UserError otherwise). Under
    ZeRO-3 every rank must call it (the forward is a collective)."""
    hf = hf_model(model)
    config = hf.config
    vocab = vocab_size or getattr(config, "vocab_size", None) or lm_head.out_features
    ids = (torch.arange(5, device=device) * 7919 % max(2, min(vocab, 32000)))[None]
    captured = {}

    def grab(module, args, output):
        captured["raw"] = output.detach().float()

    handle = lm_head.register_forward_hook(grab)
    was_training = hf.training
    hf.eval()
    try:
        true = model(input_ids=ids, use_cache=False).logits.float()
        raw = captured.pop("raw")
        with neutral_logits(model):
            neutral = model(input_ids=ids, use_cache=False).logits.float()
    finally:
        handle.remove()
        hf.train(was_training)
    # bf16/fp16 models round every op (and may cap in their own dtype): 2 % of the largest logit
    rel = 1e-4 if next(hf.parameters()).dtype == torch.float32 else 2e-2
    tol = rel * (1.0 + raw.abs().max().item())
    kind = getattr(config, "model_type", type(hf).__name__)
    err = (transform.apply(raw) - true).abs().max().item()
    if err > tol:
        raise UserError(f"the {kind} model transforms its logits after lm_head in a way srmir does not know "
                        f"(max |logits − known transform of the head output| = {err:.3g}); its log-probs would be "
                        "wrong, so it is refused (see srmir/runtime/logits.py)", where=where)
    err = (neutral - raw).abs().max().item()
    if err > tol:
        raise UserError(f"srmir cannot switch off the {kind} model's logit post-processing (max |Δ| = {err:.3g}); "
                        "its log-probs would be wrong, so it is refused (see srmir/runtime/logits.py)", where=where)
