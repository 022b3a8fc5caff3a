"""Degeneration statistics of generated text: pure functions of strings, shared by training and eval.

A policy optimised against a reward model can learn that repetitive or evasive filler pays
(reward hacking). These are the cheap, model-free signs of it, computed identically for the
per-step training metrics (``srmir.trainer``) and for the evaluation report (``srmir.eval``):

- :func:`is_repetitive` — some word n-gram (default 4) occurs ``min_repeats`` (default 3) or more
  times in one answer: a loop ("I'm here to help, but I'm not here to help you. I'm here to help
  you, but ...");
- :func:`distinct_n` — distinct n-grams / all n-grams over a set of answers (Li et al. 2016,
  "A Diversity-Promoting Objective"): low values mean the answers repeat themselves or each other;
- :func:`word_count` — answer length in words.

Words are lower-cased runs of letters, digits and apostrophes; punctuation is ignored, so
"help you." and "help you," are the same 2-gram.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

_WORD = re.compile(r"[\w']+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (runs of letters, digits, ``_`` and apostrophes)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def word_count(text: str) -> int:
    """Number of words in ``text``."""
    return len(words(text))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty when there are fewer than n tokens)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def max_ngram_repeats(text: str, n: int = 4) -> int:
    """How often the most frequent word n-gram of ``text`` occurs (0 when it has fewer than n words)."""
    counts = Counter(ngrams(words(text), n))
    return max(counts.values(), default=0)


def is_repetitive(text: str, n: int = 4, min_repeats: int = 3) -> bool:
    """True when some word ``n``-gram occurs at least ``min_repeats`` times in ``text``.

    Example: "I'm here to help, but I'm not here to help you. I'm here to help you, but" holds
    "i'm here to help" ... the 4-gram "here to help you" twice and "i'm here to help" twice:
    not yet repetitive at min_repeats=3; one more loop makes it so.
    """
    return max_ngram_repeats(text, n) >= min_repeats


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Distinct word n-grams / total word n-grams over all ``texts`` (pooled); nan when there is none.

    Example: ["a b a b"] has 2-grams (a b), (b a), (a b): 2 distinct of 3 → 0.667.
    """
    total, distinct = 0, set()
    for text in texts:
        grams = ngrams(words(text), n)
        total += len(grams)
        distinct.update(grams)
    return len(distinct) / total if total else float("nan")
