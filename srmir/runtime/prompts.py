"""Prompt encoding: one request → the same token ids in training, eval and data generation.

The rule (:class:`PromptEncoder`):

- with a chat template (and ``use_chat_template``): the request becomes one user turn with the
  generation prompt appended; the template already holds BOS and the role markers, so the text
  is tokenized **without** adding special tokens;
- without one: the raw request, tokenized **with** the tokenizer's special tokens (BOS), the way
  the model saw text in pre-training;
- longer than ``max_prompt_length`` tokens: the **start of the request** is cut, never the
  template around it (the assistant turn must still open at the end) nor the end of the
  request (where the question usually is). Each cut is counted in ``truncated``.

Before this module, training encoded without special tokens and eval with them when there was
no chat template, so the policy was evaluated on inputs it was never trained on.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import UserError


class PromptEncoder:
    """Format, encode, truncate and left-pad prompts for one tokenizer."""

    def __init__(self, tokenizer, use_chat_template: bool = True, max_prompt_length: Optional[int] = None,
                 where: str = "data.max_prompt_length"):
        self.tokenizer = tokenizer
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.max_prompt_length, self.where = max_prompt_length, where
        self.truncated = 0  # prompts cut so far

    def text(self, prompt: str) -> str:
        """The model input text of ``prompt`` (chat-formatted when there is a template)."""
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def _encode_text(self, prompt: str) -> list[int]:
        return self.tokenizer(self.text(prompt), add_special_tokens=not self.chat)["input_ids"]

    def ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, at most ``max_prompt_length`` of them (the request's start cut)."""
        ids = self._encode_text(prompt)
        limit = self.max_prompt_length
        if limit is None or len(ids) <= limit:
            return ids
        self.truncated += 1
        body = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        keep = len(body) - (len(ids) - limit)  # what the template and special tokens leave for the request
        if keep < 1:
            raise UserError(f"{limit} tokens do not even hold the chat template around a prompt "
                            f"({len(ids) - len(body)} tokens)", where=self.where)
        for _ in range(4):  # decode → re-encode can merge tokens differently at the cut: shrink until it fits
            ids = self._encode_text(self.tokenizer.decode(body[-keep:]))
            if len(ids) <= limit:
                return ids
            keep -= len(ids) - limit
            if keep < 1:
                break
        return ids[-limit:]  # last resort: a plain cut from the left

    def encode(self, prompts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """(token ids, was truncated) of each prompt."""
        rows, cut = [], []
        for p in prompts:
            before = self.truncated
            rows.append(self.ids(p))
            cut.append(self.truncated > before)
        return rows, cut

    def batch(self, prompts: Sequence[str], device=None, pad_id: Optional[int] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``[B, P]`` ids and attention mask (decoder-only models continue at the right edge)."""
        return self.pad(self.encode(prompts)[0], device, pad_id)

    def pad(self, rows: Sequence[Sequence[int]], device=None, pad_id: Optional[int] = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad encoded prompts into ``[B, P]`` ids and mask."""
        pad = self.tokenizer.pad_token_id if pad_id is None else pad_id
        width = max((len(r) for r in rows), default=0)
        ids_BP = torch.full((len(rows), width), pad, dtype=torch.long)
        mask_BP = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids_BP[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask_BP[i, width - len(r):] = 1
        return ids_BP.to(device), mask_BP.to(device)
