"""From the bank's ``[N, K]`` scores to one reward per sample, through ``srmir.algos.combine_rewards``.

SRMIR's two integration strategies (arXiv 2503.18991 §3.3):

- ``linear``: r_i = Σ_k w_k s_ik — every RM votes; weights uniform, proportional to each
  category's share of the data, or given explicitly;
- ``categorized``: r_i = s_{i, c_i} — each prompt is judged by the RM of its own category. The
  label comes from the data; prompts without one are routed by the bank's category classifier.

The K scores stay separate until this one call combines them (STYLE principle 6).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch

from ..errors import UserError
from .bank import ShadowRewardBank

WeightSpec = Union[str, Sequence[float]]


def linear_weights(spec: WeightSpec, categories: Sequence[str], counts: Optional[Mapping[str, int]] = None) -> torch.Tensor:
    """Linear-combination weights ``[K]`` summing to 1.

    ``"uniform"``: 1/K. ``"frequency"``: w_k = n_k / Σ n (``counts`` per category, e.g. of the
    prompts the policy trains on). A list of K non-negative numbers: normalized to sum 1.
    """
    k = len(categories)
    if isinstance(spec, str):
        if spec == "uniform":
            return torch.full((k,), 1.0 / k)
        if spec == "frequency":
            if counts is None:
                raise UserError("frequency weights need the category counts of the data", where="rewards.weights")
            w_K = torch.tensor([float(counts.get(c, 0)) for c in categories])
        else:
            raise UserError(f"unknown weights {spec!r}; use uniform, frequency or a list of {k} numbers",
                            where="rewards.weights")
    else:
        w_K = torch.tensor([float(w) for w in spec])
        if w_K.shape != (k,):
            raise UserError(f"got {len(w_K)} weights for {k} reward models ({', '.join(categories)})", where="rewards.weights")
        if (w_K < 0).any():
            raise UserError("weights must be non-negative", where="rewards.weights")
    if w_K.sum() <= 0:
        raise UserError("weights sum to zero (no data in the bank's categories?)", where="rewards.weights")
    return w_K / w_K.sum()


def category_columns(bank: ShadowRewardBank, labels: Optional[Sequence[Optional[str]]], prompts: Sequence[str]) -> torch.Tensor:
    """Bank column per sample ``[N]``: the data's label where there is one, else the classifier's guess."""
    labels = list(labels) if labels is not None else [None] * len(prompts)
    missing = [i for i, c in enumerate(labels) if c is None]
    cols_N = torch.tensor([bank.column(c) if c is not None else -1 for c in labels], dtype=torch.long)
    if missing:
        guessed = bank.classify([prompts[i] for i in missing])
        if guessed is None:
            raise UserError("categorized rewards need a category for every prompt, and this reward bank has no "
                            "category classifier for unlabeled ones", where="rewards.strategy")
        cols_N[missing] = guessed.cpu()
    return cols_N


def shadow_rewards(bank: ShadowRewardBank, prompts: Sequence[str], responses: Sequence[str], strategy: str,
                   weights: Optional[torch.Tensor] = None, labels: Optional[Sequence[Optional[str]]] = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards ``[N]``, scores ``[N, K]``): score all K RMs in one pass, then combine.

    ``weights`` (``[K]``, from :func:`linear_weights`) for ``linear``; ``labels`` (a category slug
    or None per sample) for ``categorized``.
    """
    from ..algos import combine_rewards

    scores_NK = bank.score(prompts, responses)
    if strategy == "categorized":
        cols_N = category_columns(bank, labels, prompts).to(scores_NK.device)
        return combine_rewards(scores_NK, "categorized", categories=cols_N), scores_NK
    w_K = None if weights is None else torch.as_tensor(weights, dtype=scores_NK.dtype, device=scores_NK.device)
    return combine_rewards(scores_NK, strategy, weights=w_K), scores_NK
