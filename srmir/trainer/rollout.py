"""Rollout: prompts → token ids (``srmir.runtime.PromptEncoder``) → G sampled completions each, with masks and flags.

Layout of one rollout batch (B sequences on this rank)::

    input_ids_BT = [ pad pad p p p p | c c c EOS pad pad ]     T = P + C
                     └ prompt_ids_BP ┘ └ completion_ids_BC ┘
    prompts are left-padded to a common P, so every completion starts at column P;
    completion_mask_BC is 1 up to and including the first EOS (the EOS is an action the policy
    took and gets credit for it) and 0 on the padding written after it; a completion
    that never emits EOS within max_new_tokens is ``truncated``.

Under ZeRO-3 each rank holds 1/world of every weight. Generating through the engine would
all-gather layer by layer for every new token (hours per step), and ranks whose sequences end
at different lengths would wait forever in each other's gathers. ``gathered_for_generation``
instead gathers every parameter once per rollout (DeepSpeed's
``unwrap_model_for_generation``), so generation is local: no collectives, no hang.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch

from ..runtime.prompts import PromptEncoder


@dataclass
class Rollout:
    """One rank's sampled completions. B sequences, P prompt columns, C completion columns."""

    prompt_ids_BP: torch.Tensor
    prompt_mask_BP: torch.Tensor
    completion_ids_BC: torch.Tensor
    completion_mask_BC: torch.Tensor
    truncated_B: torch.Tensor  # bool: no EOS within the budget
    completions: list[str]  # decoded completion text (special tokens removed)

    @property
    def input_ids_BT(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids_BP, self.completion_ids_BC], dim=1)

    @property
    def attention_mask_BT(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask_BP, self.completion_mask_BC], dim=1)

    def __len__(self) -> int:
        return self.completion_ids_BC.shape[0]

    def select(self, rows: slice) -> "Rollout":
        """A micro-batch: rows of every tensor (texts too)."""
        return Rollout(self.prompt_ids_BP[rows], self.prompt_mask_BP[rows], self.completion_ids_BC[rows],
                       self.completion_mask_BC[rows], self.truncated_B[rows], self.completions[rows])


def completion_mask(completion_ids_BC: torch.Tensor, eos_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask_BC, truncated_B): 1 through the first EOS inclusive; truncated when there is none.

    Example: ids [5, 7, EOS, pad] → mask [1, 1, 1, 0], truncated False; [5, 7, 8, 9] → all 1, True.
    """
    is_eos_BC = torch.isin(completion_ids_BC, torch.as_tensor(list(eos_ids), device=completion_ids_BC.device))
    # eos_before_BC[b, t] = number of EOS strictly before column t
    eos_before_BC = torch.cumsum(is_eos_BC.long(), dim=1) - is_eos_BC.long()
    mask_BC = (eos_before_BC == 0).long()
    truncated_B = ~is_eos_BC.any(dim=1)
    return mask_BC, truncated_B


@contextlib.contextmanager
def gathered_for_generation(engine, zero_stage: int):
    """The HF model to call ``generate`` on (inside a peft wrapper: the model with its LoRA adapters
    active, merged into temporary copies of their weights: ``runtime.lora.merged_for_generation``).
    Under ZeRO-3: all parameters, adapters included, gathered *once* for the whole rollout and
    DeepSpeed's per-module hooks removed (re-added on exit)."""
    from ..runtime.lora import hf_model, merged_for_generation

    gather = contextlib.nullcontext()
    if zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        gather = unwrap_model_for_generation(engine)
    with gather, merged_for_generation(engine):  # merged inside the gather, restored before re-sharding
        yield hf_model(engine)


def position_ids(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (cumsum of the mask − 1): what generation uses, and so
    what every later log-prob pass must use."""
    return (attention_mask_BT.long().cumsum(dim=1) - 1).clamp(min=0)


def sample_tokens(logits_BV: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """One token per row from softmax(logits / temperature), after top-k and nucleus (top-p)
    filtering; ``temperature`` 0 is greedy.

    Sampling is by inverse CDF — one uniform number per row and a binary search in the row's
    cumulative probabilities — instead of ``torch.multinomial``, which draws an exponential
    variate for every vocabulary entry (on CPU a third of a decode step at a 49k vocabulary).
    """
    if temperature == 0:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k > 0 and top_k < logits_BV.shape[-1]:
        kth_B1 = torch.topk(logits_BV, top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    probs_BV = torch.softmax(logits_BV, dim=-1)
    if top_p < 1.0:
        sorted_BV, order_BV = torch.sort(probs_BV, dim=-1, descending=True)
        # drop a token when the tokens more probable than it already cover top_p (the first always stays)
        drop_BV = (sorted_BV.cumsum(dim=-1) - sorted_BV) >= top_p
        probs_BV = probs_BV.scatter(-1, order_BV, sorted_BV.masked_fill(drop_BV, 0.0))
    cdf_BV = probs_BV.cumsum(dim=-1)
    if not bool(torch.isfinite(cdf_BV[:, -1]).all()):  # a binary search in NaNs would pick the last token
        raise RuntimeError("non-finite logits while sampling: the policy's weights have diverged")
    u_B1 = torch.rand((cdf_BV.shape[0], 1), device=cdf_BV.device) * cdf_BV[:, -1:]
    return torch.searchsorted(cdf_BV, u_B1, right=True).squeeze(1).clamp_(max=cdf_BV.shape[-1] - 1)


def prompt_runs(prompt_texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Consecutive identical prompts as (texts, run lengths): a GRPO group is one run."""
    texts: list[str] = []
    counts: list[int] = []
    for text in prompt_texts:
        if texts and text == texts[-1]:
            counts[-1] += 1
        else:
            texts.append(text)
            counts.append(1)
    return texts, counts


@torch.no_grad()
def sample_completions(model, prompt_ids_UP: torch.Tensor, prompt_mask_UP: torch.Tensor, repeats_U: torch.Tensor, *,
                       max_new_tokens: int, temperature: float, top_p: float, top_k: int, eos_ids: Sequence[int],
                       pad_id: int) -> torch.Tensor:
    """``[B, C]`` sampled completion ids, B = Σ repeats, row-major by prompt (padded after EOS).

    Each distinct prompt is prefilled *once*; its KV cache is then repeated for its rows (a GRPO
    group shares one prompt: G× less prefill). Decoding stops as soon as every row has emitted an
    EOS, so C is the longest completion, at most ``max_new_tokens``.
    """
    device = prompt_ids_UP.device
    pos_UP = position_ids(prompt_mask_UP)
    out = model(input_ids=prompt_ids_UP, attention_mask=prompt_mask_UP, position_ids=pos_UP, use_cache=True,
                logits_to_keep=1)
    rows_B = torch.repeat_interleave(torch.arange(len(repeats_U), device=device), repeats_U.to(device))
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    # the keyword was renamed in transformers 5.x; a remote-code model may still take the old one
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache.reorder_cache(rows_B)  # each prompt's keys/values repeated for its rows
    logits_BV = out.logits[rows_B, -1]
    mask_BT = prompt_mask_UP[rows_B]
    next_pos_B1 = pos_UP[rows_B, -1:] + 1
    eos_E = torch.as_tensor(list(eos_ids), device=device)
    done_B = torch.zeros(len(rows_B), dtype=torch.bool, device=device)
    tokens = []
    for t in range(max_new_tokens):
        token_B = torch.where(done_B, pad_id, sample_tokens(logits_BV, temperature, top_p, top_k))
        tokens.append(token_B)
        done_B = done_B | torch.isin(token_B, eos_E)
        if t == max_new_tokens - 1 or bool(done_B.all()):
            break
        mask_BT = torch.cat([mask_BT, torch.ones_like(mask_BT[:, :1])], dim=1)
        out = model(input_ids=token_B[:, None], attention_mask=mask_BT, position_ids=next_pos_B1,
                    use_cache=True, **{cache_kw: cache})
        logits_BV = out.logits[:, -1]
        next_pos_B1 = next_pos_B1 + 1
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def generate(
    model,
    encoder: PromptEncoder,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    eos_ids: Sequence[int],
    pad_id: int,
) -> Rollout:
    """Sample one completion per entry of ``prompts`` (the raw requests; a group's rows
    consecutive, so that its prompt is encoded and prefilled once). ``encoder`` turns a request
    into token ids exactly as evaluation does (chat template, special tokens, truncation).

    ``model`` is a plain HF causal LM (see :func:`gathered_for_generation`). The sampling settings
    are exactly the ones given: nothing from the model's own generation_config (a repetition
    penalty, a default top_k=50) silently changes the distribution being optimised; the EOS set
    is the runtime's (tokenizer + model config + generation config).
    """
    device = next(model.parameters()).device
    tokenizer = encoder.tokenizer
    texts, counts = prompt_runs(prompts)
    prompt_ids_UP, prompt_mask_UP = encoder.batch(texts, device, pad_id=pad_id)
    repeats_U = torch.tensor(counts, device=device)
    was_training = model.training
    model.eval()  # use the KV cache even with gradient checkpointing on
    try:
        completion_ids_BC = sample_completions(
            model, prompt_ids_UP, prompt_mask_UP, repeats_U, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, top_k=top_k, eos_ids=eos_ids, pad_id=pad_id)
    finally:
        model.train(was_training)
    prompt_ids_BP = prompt_ids_UP.repeat_interleave(repeats_U, dim=0)
    prompt_mask_BP = prompt_mask_UP.repeat_interleave(repeats_U, dim=0)
    mask_BC, truncated_B = completion_mask(completion_ids_BC, eos_ids)
    completion_ids_BC = torch.where(mask_BC.bool(), completion_ids_BC, torch.full_like(completion_ids_BC, pad_id))
    lengths_B = mask_BC.sum(dim=1).tolist()
    texts = [tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(completion_ids_BC.tolist(), lengths_B)]
    return Rollout(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, mask_BC, truncated_B, texts)
