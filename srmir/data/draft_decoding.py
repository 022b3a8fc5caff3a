"""Constrained decoding of the Chain-of-Draft *format* for small local models.

A 135M model copies the few-shot pattern only loosely: its drafts run on past the word budget,
loop ("no disrespect, no disrespect, ...") and never reach ``####`` (measured on SmolLM2-135M:
0 of 7 valid with two shots). Grammar-constrained decoding (as in vLLM's guided decoding or
outlines) fixes the *shape* while leaving the *content* to the model:

- a draft step may hold at most ``max_step_words`` words — at the limit, tokens that would start
  a new word are masked, and at the next word boundary ``" ;"`` is forced (also once a step runs
  past ``12 × max_step_words`` characters);
- after ``steps`` steps, ``"\\n####"`` is forced; ``#`` and end-of-text are masked in the draft;
- the answer after ``####`` is the model's own: whether it refuses is still checked by
  :func:`srmir.data.cod.cod_problems`. Only a second ``####`` is turned into end-of-text (a stop
  string), because small models otherwise repeat the ``#### answer`` block until the budget ends.
"""
from __future__ import annotations

import re

import torch
from transformers import LogitsProcessor

from .cod import SEPARATOR, DraftFormat, count_words


class _Vocab:
    """Per-tokenizer token classes, computed once: new-word starters and ``#``-bearing tokens."""

    _cache: dict[int, "_Vocab"] = {}

    def __init__(self, tokenizer):
        size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(size)])  # one Rust call for a fast tokenizer
        self.new_word = torch.tensor([bool(t) and t[0].isspace() and any(c.isalnum() for c in t) for t in texts])
        self.hash = torch.tensor(["#" in t for t in texts])
        self.sep_ids = tokenizer.encode(" ;", add_special_tokens=False)
        self.end_ids = tokenizer.encode("\n" + SEPARATOR, add_special_tokens=False)

    def masks(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(new-word mask, ``#`` mask) padded with False to the model's logit width V."""
        pad = max(0, width - self.new_word.shape[0])
        grow = lambda m: torch.cat([m, m.new_zeros(pad)])[:width]
        return grow(self.new_word), grow(self.hash)

    @classmethod
    def of(cls, tokenizer) -> "_Vocab":
        key = id(tokenizer)
        if key not in cls._cache:
            cls._cache[key] = cls(tokenizer)
        return cls._cache[key]


class DraftFormatProcessor(LogitsProcessor):
    """A ``transformers`` logits processor: ``scores_BV`` → masked ``scores_BV`` (see module doc).

    ``prompt_len`` is the (left-padded) prompt width, so ``input_ids_BL[:, prompt_len:]`` are
    the generated tokens of each row.
    """

    def __init__(self, tokenizer, prompt_len: int, fmt: DraftFormat, eos_ids: set[int]):
        self.tok, self.prompt_len, self.fmt = tokenizer, prompt_len, fmt
        self.vocab = _Vocab.of(tokenizer)
        self.eos_ids = sorted(i for i in eos_ids if i is not None)
        self.queue: dict[int, list[int]] = {}  # row -> token ids still to force

    def __call__(self, input_ids_BL: torch.LongTensor, scores_BV: torch.FloatTensor) -> torch.FloatTensor:
        for b in range(input_ids_BL.shape[0]):
            text = self.tok.decode(input_ids_BL[b, self.prompt_len:], skip_special_tokens=True)
            if SEPARATOR in text and not self.queue.get(b):
                self._end_instead_of_hash(scores_BV[b])
                continue
            if not self.queue.get(b):
                self.queue[b] = self._plan(text)
            if self.queue[b]:
                self._force(scores_BV[b], self.queue[b].pop(0))
            else:
                self._restrict(scores_BV[b], text)
        return scores_BV

    def _plan(self, text: str) -> list[int]:
        """Tokens to force now: the end of the draft, a step separator, or nothing."""
        pieces = re.split(r"[;\n]", text)
        done = sum(1 for p in pieces[:-1] if p.strip())  # "a\n\nb" has one finished step, not two
        current = pieces[-1]
        if done >= self.fmt.steps or (done == self.fmt.steps - 1 and self._at_limit_boundary(current)):
            return list(self.vocab.end_ids)
        if self._at_limit_boundary(current):
            return list(self.vocab.sep_ids)
        return []

    def _at_limit_boundary(self, step: str) -> bool:
        """The step has its full word budget and its last word is finished — or it has run past
        ``12 × max_step_words`` characters (a word that never ends would stall the draft)."""
        if len(step.strip()) >= 12 * self.fmt.max_step_words:
            return True
        return count_words(step) >= self.fmt.max_step_words and bool(step) and not step[-1].isalnum()

    def _restrict(self, scores_V: torch.Tensor, text: str) -> None:
        new_word_V, hash_V = self.vocab.masks(scores_V.shape[0])
        scores_V[hash_V.to(scores_V.device)] = float("-inf")
        if self.eos_ids:
            scores_V[self.eos_ids] = float("-inf")
        current = re.split(r"[;\n]", text)[-1]
        if count_words(current) >= self.fmt.max_step_words:  # only continue the last word or end the step
            scores_V[new_word_V.to(scores_V.device)] = float("-inf")

    def _end_instead_of_hash(self, scores_V: torch.Tensor) -> None:
        """In the answer, a new ``#`` would start another ``####`` block (small models loop so):
        move its probability mass to end-of-text — a stop string, in logit space."""
        if not self.eos_ids:
            return
        _, hash_V = self.vocab.masks(scores_V.shape[0])
        hash_V = hash_V.to(scores_V.device)
        eos = self.eos_ids[0]
        scores_V[eos] = torch.logaddexp(scores_V[eos], torch.logsumexp(scores_V[hash_V], dim=0))
        scores_V[hash_V] = float("-inf")

    @staticmethod
    def _force(scores_V: torch.Tensor, token_id: int) -> None:
        keep = scores_V[token_id].clone()
        scores_V.fill_(float("-inf"))
        scores_V[token_id] = keep if torch.isfinite(keep) else 0.0
