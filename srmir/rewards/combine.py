"""From the bank's scores to one reward per sample: the routing rule, through ``srmir.algos.route_rewards``.

SRMIR's two integration strategies (arXiv 2503.18991 §3.3):

- ``linear``: r_i = Σ_k w_k s_ik — every RM votes; weights uniform, proportional to each
  category's share of the data, or given explicitly;
- ``categorized``: r_i = s_{i, c_i} — each prompt is judged by the RM of its own category. The
  label comes from the data; prompts without one are routed by the bank's category classifier.

Beyond the paper: benign prompts (which should be answered, not refused) are rewarded by the
bank's *helpfulness* RM, so a policy cannot earn reward by refusing everything. The K scores stay
separate until :func:`route` combines them (STYLE principle 6); the trainer, the eval's reward
judge and the benchmarks all go through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch

from ..errors import UserError
from .bank import BENIGN_CLASS, HELPFULNESS, ShadowRewardBank  # noqa: F401  (re-exported)

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


# HELPFULNESS, the name of the helpfulness RM's score column (not a harm category), is defined beside
# the bank that owns that column (bank.HELPFULNESS) and re-exported here.
BENIGN_LABEL = BENIGN_CLASS  # data label of a prompt that should be answered, not refused (srmir.data.cod.BENIGN)


@dataclass
class RoutedRewards:
    """The outcome of :func:`route`: one reward per sample and where it came from."""

    rewards_N: torch.Tensor  # [N] float32; NaN = unscored
    columns_N: torch.Tensor  # [N] harm category index k, or algos.BENIGN (-1) for a benign prompt
    nonfinite: bool  # an ±inf score entered some reward (combined, it could pass for NaN = unscored)


def route(scores_NH: torch.Tensor, heads: Sequence[str], labels: Sequence[str], strategy: str,
          weights: Optional[torch.Tensor] = None) -> RoutedRewards:
    """The routing rule, the one place where scores become rewards (trainer and eval judge alike).

    ``scores_NH``: one column per name in ``heads`` — the K harm RMs (the bank's ``categories``)
    and, when the bank has one, :data:`HELPFULNESS`. ``labels``: per sample a harm slug or
    :data:`BENIGN_LABEL` (unlabeled prompts are classified first: :func:`resolve_labels`).

    Harmful prompt → its category's RM (``categorized``) or the weighted mix of the K harm RMs
    (``linear``, ``weights`` ``[K]`` from :func:`linear_weights`, uniform when None — so under
    ``linear`` a harm label outside the bank's categories is fine); benign prompt
    → the helpfulness RM (NaN, i.e. unscored, when the bank has none). See ``algos.route_rewards``.
    """
    from ..algos import BENIGN, route_rewards

    heads = list(heads)
    harm = [h for h in heads if h != HELPFULNESS]
    harm_idx = torch.tensor([heads.index(h) for h in harm], device=scores_NH.device)
    harm_NK = scores_NH.index_select(1, harm_idx)
    helpful_N = scores_NH[:, heads.index(HELPFULNESS)] if HELPFULNESS in heads else None
    cols = []
    for label in labels:
        if label == BENIGN_LABEL:
            cols.append(BENIGN)
        elif label in harm:
            cols.append(harm.index(label))
        elif strategy == "linear" and label:
            cols.append(0)  # any harm label takes the weighted mix of all K harm RMs: the column is unused
        else:
            raise UserError(f"no reward model routes the label {label!r} (harm RMs: {', '.join(harm)}; "
                            f"'{BENIGN_LABEL}' goes to the helpfulness RM)", where="rewards.strategy")
    columns_N = torch.tensor(cols, dtype=torch.long, device=scores_NH.device)
    w_K = None if weights is None else torch.as_tensor(weights, dtype=scores_NH.dtype, device=scores_NH.device)
    rewards_N = route_rewards(harm_NK, columns_N, strategy, w_K, helpful_N)
    # which scores entered each reward, to tell a broken (±inf) score from an unscored (NaN) one
    benign_N1 = (columns_N == BENIGN)[:, None]
    if strategy == "linear":
        used_NK = (w_K != 0 if w_K is not None else torch.ones(len(harm), dtype=torch.bool, device=scores_NH.device))
        used_NK = used_NK[None, :].expand_as(harm_NK) & ~benign_N1
    else:
        used_NK = torch.nn.functional.one_hot(columns_N.clamp(min=0), len(harm)).bool() & ~benign_N1
    nonfinite = bool(torch.isinf(harm_NK[used_NK]).any())
    if helpful_N is not None:
        nonfinite |= bool(torch.isinf(helpful_N[benign_N1[:, 0]]).any())
    return RoutedRewards(rewards_N, columns_N, nonfinite)


def resolve_labels(bank, labels: Optional[Sequence[Optional[str]]], prompts: Sequence[str],
                   strategy: str = "categorized") -> list[str]:
    """Every sample's routing label: the data's label where there is one, else the bank's prompt
    classifier's guess (a harm slug, or ``benign`` when the classifier knows that class). Under
    ``linear`` a bank without a classifier treats unlabeled prompts as harmful (the mix of all K)."""
    labels = list(labels) if labels is not None else [None] * len(prompts)
    missing = [i for i, c in enumerate(labels) if c is None]
    if missing and strategy == "linear" and bank.classifier is None:
        return [bank.categories[0] if c is None else c for c in labels]  # linear: the column does not matter
    if missing:
        guessed = bank.classify_labels([prompts[i] for i in missing]) if hasattr(bank, "classify_labels") else None
        if guessed is None:
            cols = bank.classify([prompts[i] for i in missing])
            guessed = None if cols is None else [bank.categories[int(c)] for c in cols.tolist()]
        if guessed is None:
            raise UserError("a prompt without a category label needs the reward bank's category classifier, and "
                            "this bank has none", where="rewards.strategy")
        for i, g in zip(missing, guessed):
            labels[i] = g
    return labels


def bank_heads(bank) -> list[str]:
    """Names of the columns of ``bank.score_heads`` (harm categories, then helpfulness if present)."""
    return list(getattr(bank, "heads", bank.categories))


def score_heads(bank, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
    """``[N, H]`` scores of every head of the bank in one batched pass (``bank_heads`` order)."""
    if hasattr(bank, "score_heads"):
        return bank.score_heads(prompts, responses)
    return bank.score(prompts, responses)


def shadow_rewards(bank, prompts: Sequence[str], responses: Sequence[str], strategy: str,
                   weights: Optional[torch.Tensor] = None, labels: Optional[Sequence[Optional[str]]] = None
                   ) -> tuple[RoutedRewards, torch.Tensor]:
    """(routed rewards, scores ``[N, H]``): score every head in one pass, classify unlabeled
    prompts, then :func:`route`."""
    scores_NH = score_heads(bank, prompts, responses)
    routed = route(scores_NH, bank_heads(bank), resolve_labels(bank, labels, prompts, strategy), strategy, weights)
    return routed, scores_NH
