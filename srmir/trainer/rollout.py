"""Rollout: prompts → chat template → G sampled completions each, with masks and flags.

Layout of one rollout batch (B sequences on this rank)::

    input_ids_BT = [ pad pad p p p p | c c c EOS pad pad ]     T = P + C
                     └ prompt_ids_BP ┘ └ completion_ids_BC ┘
    prompts are left-padded to a common P, so every completion starts at column P;
    completion_mask_BC is 1 up to and including the first EOS (the EOS is an action the policy
    took and gets credit for it) and 0 on the padding generate() writes after it; a completion
    that never emits EOS within max_new_tokens is ``truncated``.

Under ZeRO-3 each rank holds 1/world of every weight. Generating through the engine would
all-gather layer by layer for every new token (hours per step), and ranks whose sequences end
at different lengths would wait forever in each other's gathers. ``gathered_for_generation``
instead gathers every parameter once per rollout (DeepSpeed's
``unwrap_model_for_generation``), so generation is local: no collectives, no hang.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import GenerationConfig


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


def format_prompts(tokenizer, prompts: Sequence[str], use_chat_template: bool = True) -> list[str]:
    """Each prompt as the policy sees it: a one-turn chat with the generation prompt appended."""
    if not (use_chat_template and getattr(tokenizer, "chat_template", None)):
        return list(prompts)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def tokenize_prompts(tokenizer, texts: Sequence[str], max_prompt_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``[B, P]`` ids and mask; prompts over the limit lose their *start* (the
    chat template's tail, where the assistant turn opens, must survive)."""
    old = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                        max_length=max_prompt_length, add_special_tokens=False)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


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


def eos_token_ids(tokenizer, model_config) -> list[int]:
    """EOS ids from the generation config, the model config and the tokenizer, deduplicated."""
    ids: list[int] = []
    for source in (getattr(model_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer and model define no EOS token; generation could not stop")
    return ids


@contextlib.contextmanager
def gathered_for_generation(engine, zero_stage: int):
    """The HF model to call ``generate`` on. Under ZeRO-3: all parameters gathered *once* for the
    whole rollout and DeepSpeed's per-module hooks removed (re-added on exit)."""
    if zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        with unwrap_model_for_generation(engine):
            yield engine.module
    else:
        yield engine.module


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_texts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_prompt_length: int,
    eos_ids: Sequence[int],
    pad_id: int,
) -> Rollout:
    """Sample one completion per entry of ``prompt_texts`` (already chat-formatted).

    ``model`` is a plain HF causal LM (see :func:`gathered_for_generation`). Sampling settings are
    passed as a fresh GenerationConfig so nothing from the model's own generation_config (a
    repetition penalty, a default top_k=50) silently changes the distribution being optimised.
    """
    device = next(model.parameters()).device
    prompt_ids_BP, prompt_mask_BP = tokenize_prompts(tokenizer, prompt_texts, max_prompt_length, device)
    gen_config = GenerationConfig(
        do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids), pad_token_id=pad_id, use_cache=True,
    )
    was_training = model.training
    model.eval()  # use the KV cache even with gradient checkpointing on
    try:
        out_BT = model.generate(input_ids=prompt_ids_BP, attention_mask=prompt_mask_BP, generation_config=gen_config)
    finally:
        model.train(was_training)
    completion_ids_BC = out_BT[:, prompt_ids_BP.shape[1]:]
    mask_BC, truncated_B = completion_mask(completion_ids_BC, eos_ids)
    completion_ids_BC = torch.where(mask_BC.bool(), completion_ids_BC, torch.full_like(completion_ids_BC, pad_id))
    lengths_B = mask_BC.sum(dim=1).tolist()
    texts = [tokenizer.decode(ids[:n], skip_special_tokens=True) for ids, n in zip(completion_ids_BC.tolist(), lengths_B)]
    return Rollout(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, mask_BC, truncated_B, texts)
