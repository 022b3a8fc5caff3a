"""One reward model: any Hugging Face backbone plus a scalar head, and how its inputs are built.

A reward model reads a (prompt, response) pair and returns one number r. Three things must be
the same at training and at scoring time, so they live here:

- **formatting** (:class:`PairEncoder`): the tokenizer's chat template when it has one (decoders),
  else its own text-pair encoding (``[CLS] prompt [SEP] response [SEP]`` for BERT-style encoders);
- **truncation** that keeps the response: when prompt + response exceed ``max_length``, the
  prompt's *start* is dropped first (its end, next to the answer, usually carries the request),
  and only a response that alone does not fit loses its tail;
- **pooling** of the backbone's hidden states: the last non-pad token for decoders (causal
  attention makes it the only token that saw everything), the mean over tokens (or [CLS]) for
  encoders — all-MiniLM-L6-v2 was trained with mean pooling.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import UserError

POOLINGS = ("auto", "mean", "cls", "last")
# Placeholders rendered through a chat template to find where prompt and response go.
_P, _R = "<<srmir-prompt>>", "<<srmir-response>>"


# ------------------------------------------------------------------------------ backbones


def load_backbone(reference: str, where: str = "rewards.backbone"):
    """(model, tokenizer) of a backbone reference (hub id, local folder, ``embedded:minilm``), fp32."""
    from transformers import AutoModel

    from ..models import resolve_model
    from ..runtime import load_tokenizer

    path = resolve_model(reference)
    tokenizer = load_tokenizer(path, where=where)  # the runtime's loader and pad fallback
    try:
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load reward-model backbone {reference!r}: {str(e).splitlines()[0]}", where=where) from None
    return model, tokenizer


def is_decoder(config) -> bool:
    """True for causal-LM backbones (Llama, GPT-2, ...): their type has a causal LM head but no masked one."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", None)
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_pooling(pooling: str, config) -> str:
    """``auto`` → ``last`` for decoders, ``mean`` for encoders; other values pass through (validated)."""
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}", where="rewards.pooling")
    if pooling == "auto":
        return "last" if is_decoder(config) else "mean"
    return pooling


def pool(hidden_BTH: torch.Tensor, mask_BT: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``[B, T, H]`` states to ``[B, H]``: masked mean, first token, or last non-pad token."""
    if pooling == "mean":
        m_BT1 = mask_BT.unsqueeze(-1).to(hidden_BTH.dtype)
        return (hidden_BTH * m_BT1).sum(1) / m_BT1.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden_BTH[:, 0]
    if pooling == "last":
        # Index of the last attended position; correct for right and left padding alike.
        pos_BT = torch.arange(mask_BT.shape[1], device=mask_BT.device).expand_as(mask_BT)
        last_B = (pos_BT * mask_BT.long()).argmax(1)
        return hidden_BTH[torch.arange(hidden_BTH.shape[0], device=mask_BT.device), last_B]
    raise ValueError(f"unknown pooling {pooling!r}")


class RewardModel(nn.Module):
    """Backbone + linear scalar head: r = w · pool(backbone(x)) + b, one float per sequence."""

    def __init__(self, backbone: nn.Module, pooling: str):
        super().__init__()
        self.backbone = backbone
        self.pooling = resolve_pooling(pooling, backbone.config)
        self.head = nn.Linear(backbone.config.hidden_size, 1)

    @classmethod
    def from_config(cls, config, pooling: str) -> "RewardModel":
        """A randomly initialised reward model of this backbone architecture (used as a skeleton)."""
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``input_ids``/``attention_mask`` ``[B, T]`` → rewards ``[B]``."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden_BTH = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.head(pool(hidden_BTH, attention_mask, self.pooling)).squeeze(-1)


def layer_list(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer blocks: the ModuleList with ``num_hidden_layers`` entries."""
    n = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the {n} transformer blocks of {type(backbone).__name__}", where="rewards.backbone")


def freeze_lower(model: RewardModel, tuned_layers: Optional[int]) -> int:
    """Freeze the input embeddings and all blocks below the top ``tuned_layers``; return the number frozen.

    ``None`` tunes every block. Frozen weights stay bit-identical to the backbone's, so K reward
    models trained this way share them, and :class:`~srmir.rewards.bank.ShadowRewardBank` runs the
    shared bottom once per batch instead of K times.
    """
    blocks = layer_list(model.backbone)
    n_frozen = 0 if tuned_layers is None else max(0, len(blocks) - tuned_layers)
    frozen = {id(p) for p in model.backbone.get_input_embeddings().parameters()}
    for block in list(blocks)[:n_frozen]:
        frozen.update(id(p) for p in block.parameters())
    for name, p in model.backbone.named_parameters():
        if id(p) in frozen or "embed" in name:  # position/type embeddings sit before block 0
            p.requires_grad_(False)
    return n_frozen


# ------------------------------------------------------------------------------ formatting


class PairEncoder:
    """Format, truncate and pad (prompt, response) pairs identically for training and scoring.

    Each pair becomes ``head + prompt + mid + response + tail``, where head/mid/tail are the fixed
    pieces of the chat template or of the tokenizer's pair encoding (with their token type ids).
    """

    def __init__(self, tokenizer, max_length: int, decoder: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.use_type_ids = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self.head, self.mid, self.tail = self._template(decoder)
        fixed = len(self.head[0]) + len(self.mid[0]) + len(self.tail[0])
        if max_length <= fixed:
            raise UserError(f"max_length {max_length} leaves no room after {fixed} template tokens", where="rewards.max_length")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _template(self, decoder: bool):
        """(ids, type_ids) of head, mid and tail."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": _P}, {"role": "assistant", "content": _R}], tokenize=False)
            if _P not in text or _R not in text.split(_P, 1)[1]:
                raise UserError("the tokenizer's chat template drops the prompt or the response; cannot format pairs",
                                where="rewards.backbone")
            head, rest = text.split(_P, 1)
            mid, tail = rest.split(_R, 1)
            return [(self._ids(t), [0] * len(self._ids(t))) for t in (head, mid, tail)]
        # The tokenizer's own pair encoding, located by encoding two known words.
        a, b = self._ids("hello"), self._ids("world")
        enc = tok("hello", "world")
        ids, types = enc["input_ids"], enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        i = _find(ids, a, 0)
        j = _find(ids, b, i + len(a))
        pieces = [(ids[:i], types[:i]), (ids[i + len(a):j], types[i + len(a):j]), (ids[j + len(b):], types[j + len(b):])]
        if not pieces[1][0]:  # decoders concatenate pairs with nothing between: add a blank line
            nl = self._ids("\n\n")
            pieces[1] = (nl, [0] * len(nl))
        if decoder and not pieces[2][0] and tok.eos_token_id is not None:
            pieces[2] = ([tok.eos_token_id], [0])  # a final token that has seen the whole pair
        return pieces

    def encode(self, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], list[int]]:
        """Assemble one pair within ``max_length``: drop the prompt's start, then the response's end."""
        (h, ht), (m, mt), (t, tt) = self.head, self.mid, self.tail
        budget = self.max_length - len(h) - len(m) - len(t)
        r = response_ids[:budget]
        p = prompt_ids[len(prompt_ids) - (budget - len(r)):] if budget > len(r) else []
        r_type = tt[0] if tt else (mt[-1] if mt else 0)
        ids = h + p + m + r + t
        types = ht + [ht[-1] if ht else 0] * len(p) + mt + [r_type] * len(r) + tt
        return ids, types

    def tokenize(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Encode all pairs (one batched tokenizer call for prompts, one for responses)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        p_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        r_ids = self.tokenizer(list(responses), add_special_tokens=False)["input_ids"]
        return [self.encode(p, r) for p, r in zip(p_ids, r_ids)]

    def collate(self, encoded: Sequence[tuple[list[int], list[int]]], device=None) -> dict[str, torch.Tensor]:
        """Right-pad encoded pairs into ``input_ids``/``attention_mask`` (+ ``token_type_ids``) ``[B, T]``."""
        width = max(len(ids) for ids, _ in encoded)
        ids_BT = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask_BT = torch.zeros((len(encoded), width), dtype=torch.long)
        types_BT = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, (ids, types) in enumerate(encoded):
            ids_BT[i, :len(ids)] = torch.tensor(ids)
            mask_BT[i, :len(ids)] = 1
            types_BT[i, :len(types)] = torch.tensor(types)
        batch = {"input_ids": ids_BT, "attention_mask": mask_BT}
        if self.use_type_ids:
            batch["token_type_ids"] = types_BT
        return {k: v.to(device) for k, v in batch.items()} if device is not None else batch

    def prompts_only(self, prompts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
        """Prompts alone (for the category classifier), keeping each prompt's end when too long."""
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        return self.collate([self.encode(p, []) for p in ids], device)


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i:i + len(sub)] == sub:
            return i
    raise UserError("the tokenizer's pair encoding does not contain its inputs; cannot format pairs", where="rewards.backbone")


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches of similar length (sorted), so padding wastes little compute; order is restored by the caller."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
