"""Category-balanced, deterministic, resumable prompt sampler.

The stream of prompts is a pure function of ``(seed, position)``, so resuming is setting the
position (no replay) and every rank computes the same batch without communication:

- draws come in *rounds*; round r visits every category exactly once, in an order shuffled with
  seed (seed, r) — any C consecutive draws starting at a round boundary cover all C categories;
- category c's draw in round r is its r-th draw: item ``r mod n_c`` of a permutation of its
  prompts shuffled with seed (seed, c, r div n_c), i.e. each category cycles through all its
  prompts (an epoch) before repeating any, whatever its size.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np


class BalancedPromptSampler:
    """Draw prompt records so that every category is equally represented over time.

    ``records`` are dicts with at least ``prompt`` and ``category``; ``categories`` fixes the
    category order (e.g. the taxonomy's slugs); categories without records are left out.
    """

    def __init__(self, records: Sequence[dict], categories: Sequence[str], seed: int = 0):
        groups: dict[str, list[dict]] = {c: [] for c in categories}
        for rec in records:
            if rec["category"] not in groups:
                raise ValueError(f"record {rec.get('id')!r} has category {rec['category']!r} "
                                 f"outside {list(categories)}")
            groups[rec["category"]].append(rec)
        self.categories = [c for c in categories if groups[c]]
        if not self.categories:
            raise ValueError("no prompts to sample from")
        self._groups = [groups[c] for c in self.categories]
        self.seed = int(seed)
        self.position = 0

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups)

    def draw(self, n: int) -> list[dict]:
        """The next ``n`` records of the stream (advances the position)."""
        out = [self.record_at(self.position + i) for i in range(n)]
        self.position += n
        return out

    def record_at(self, i: int) -> dict:
        """Record number ``i`` of the infinite stream (pure function of seed and i)."""
        n_cat = len(self._groups)
        round_, slot = divmod(i, n_cat)
        c = int(_permutation(n_cat, (self.seed, 0, round_))[slot])
        group = self._groups[c]
        epoch, offset = divmod(round_, len(group))
        return group[int(_permutation(len(group), (self.seed, 1, c, epoch))[offset])]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "position": self.position, "num_records": len(self)}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state["num_records"] != len(self):
            raise ValueError(
                f"sampler state is for seed {state['seed']} over {state['num_records']} prompts, "
                f"but this run has seed {self.seed} over {len(self)} prompts")
        self.position = int(state["position"])


@lru_cache(maxsize=256)
def _permutation(n: int, key: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng([k % 2**32 for k in key]).permutation(n)  # SeedSequence wants k >= 0
