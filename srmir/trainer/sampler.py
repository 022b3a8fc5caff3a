"""Category-balanced, deterministic, resumable prompt sampler, mixing in benign prompts.

The stream of prompts is a pure function of ``(seed, position)``, so resuming is setting the
position (no replay) and every rank computes the same batch without communication.

Harmful and benign draws interleave at a fixed fraction ``benign_fraction`` = f: draw i is benign
when ⌊(i+1)·f⌋ > ⌊i·f⌋, so any n consecutive draws hold ⌊n·f⌋ or ⌈n·f⌉ benign prompts (evenly
spread, no randomness in the mix). A policy that sees only harmful prompts learns that refusing
pays everywhere; the benign share (rewarded by the helpfulness RM) is what makes refusing a
benign request cost reward.

Within each kind the records come from a :class:`_RoundRobin` over groups — the K harm
categories for harmful prompts, sensitive-looking vs ordinary for benign ones (``sensitive``
field; one group when absent):

- draws come in *rounds*; round r visits every group exactly once, in an order shuffled with
  seed (seed, r) — any C consecutive draws starting at a round boundary cover all C groups;
- group c's draw in round r is its r-th draw: item ``r mod n_c`` of a permutation of its
  records shuffled with seed (seed, c, r div n_c), i.e. each group cycles through all its
  records (an epoch) before repeating any, whatever its size.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

BENIGN = "benign"  # category label of a prompt to be answered, not refused


class _RoundRobin:
    """The infinite, group-balanced stream of one kind of record."""

    def __init__(self, groups: list[list[dict]], seed_key: tuple[int, ...]):
        self.groups, self.key = [g for g in groups if g], seed_key

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def record_at(self, i: int) -> dict:
        n_groups = len(self.groups)
        round_, slot = divmod(i, n_groups)
        c = int(_permutation(n_groups, (*self.key, 0, round_))[slot])
        group = self.groups[c]
        epoch, offset = divmod(round_, len(group))
        return group[int(_permutation(len(group), (*self.key, 1, c, epoch))[offset])]


class BalancedPromptSampler:
    """Draw prompt records: harmful ones balanced over the harm categories, benign ones (category
    ``benign``) at a fixed fraction of the draws.

    ``records`` are dicts with at least ``prompt`` and ``category``; ``categories`` fixes the
    harm-category order (the taxonomy's slugs); categories without records are left out.
    ``benign_fraction`` (0 ≤ f < 1) of the draws are benign; 0 ignores benign records, and a
    positive fraction without benign records is an error.
    """

    def __init__(self, records: Sequence[dict], categories: Sequence[str], seed: int = 0,
                 benign_fraction: float = 0.0):
        if not 0.0 <= benign_fraction < 1.0:
            raise ValueError(f"benign_fraction must be in [0, 1), got {benign_fraction}")
        groups: dict[str, list[dict]] = {c: [] for c in categories}
        benign: dict[str, list[dict]] = {}
        for rec in records:
            if rec["category"] == BENIGN:
                benign.setdefault(str(rec.get("sensitive", "")), []).append(rec)
            elif rec["category"] in groups:
                groups[rec["category"]].append(rec)
            else:
                raise ValueError(f"record {rec.get('id')!r} has category {rec['category']!r} "
                                 f"outside {list(categories)} and {BENIGN!r}")
        self.categories = [c for c in categories if groups[c]]
        if not self.categories:
            raise ValueError("no harmful prompts to sample from")
        self.seed = int(seed)
        self.benign_fraction = float(benign_fraction) if benign else 0.0
        if benign_fraction > 0 and not benign:
            raise ValueError(f"benign_fraction is {benign_fraction} but there is no benign prompt "
                             f"(category {BENIGN!r})")
        self._harmful = _RoundRobin([groups[c] for c in self.categories], (self.seed,))
        self._benign = _RoundRobin([benign[k] for k in sorted(benign)], (self.seed, 2))
        self.position = 0

    def __len__(self) -> int:
        return len(self._harmful) + (len(self._benign) if self.benign_fraction else 0)

    def draw(self, n: int) -> list[dict]:
        """The next ``n`` records of the stream (advances the position)."""
        out = [self.record_at(self.position + i) for i in range(n)]
        self.position += n
        return out

    def benign_before(self, i: int) -> int:
        """How many of the draws 0 … i−1 are benign: ⌊i·f⌋."""
        return math.floor(i * self.benign_fraction + 1e-9)

    def record_at(self, i: int) -> dict:
        """Record number ``i`` of the infinite stream (pure function of seed and i)."""
        nb = self.benign_before(i)
        if self.benign_before(i + 1) > nb:
            return self._benign.record_at(nb)
        return self._harmful.record_at(i - nb)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "num_records": len(self),
                "benign_fraction": self.benign_fraction}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_records"] != len(self):
            raise ValueError(
                f"sampler state is for seed {state['seed']} over {state['num_records']} prompts, "
                f"but this run has seed {self.seed} over {len(self)} prompts")
        if state.get("benign_fraction", 0.0) != self.benign_fraction:
            raise ValueError(f"sampler state has benign_fraction {state.get('benign_fraction', 0.0)}, "
                             f"this run {self.benign_fraction}")
        self.position = int(state["position"])


@lru_cache(maxsize=256)
def _permutation(n: int, key: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng([k % 2**32 for k in key]).permutation(n)  # SeedSequence wants k >= 0
