"""GRPO math as pure functions: tensors in, tensors out.

No config objects and no ``torch.distributed`` here (verl ``core_algos.py`` style); the trainer
computes global normalisers (token counts, batch sizes) once per step and passes them in, which
is what makes any split into ranks × micro-batches equal to one big batch (OpenRLHF
``loss_utils``). Shapes: N = number of completions (groups × G), K = reward models,
B = sequences in a micro-batch, T = completion tokens.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

_AGG_MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024).

    ``rewards`` is ``[N]`` with each group's ``group_size`` entries consecutive. For completion i of
    group g::

        A_i = (r_i - mean_g) / (std + eps)

    where ``std`` is the unbiased (Bessel) standard deviation of the group (``scale="group"``) or of
    all finite rewards in the batch (``scale="batch"``; the mean stays per group), and ``scale="none"`` gives ``r_i - mean_g``
    (Dr. GRPO). NaN rewards mean "unscored": they are left out of every statistic and get A = 0.
    A group with fewer than two finite rewards gets A = 0, and a group whose finite rewards are all
    equal gets exactly 0 (statistics in float64, plus an explicit max == min rule: a float32 mean
    of eight rewards of 0.7 is not exactly 0.7). Returns ``[N]`` float32.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"N={rewards.numel()} rewards do not split into groups of {group_size}")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    # float64 statistics: a float32 mean of G equal rewards is inexact, and (r − mean)/(std + eps)
    # would magnify the residue into a same-signed push on every member of a no-signal group
    r_GS = rewards.detach().double().view(-1, group_size)  # [groups, G]
    valid_GS = torch.isfinite(r_GS)
    n_G = valid_GS.sum(dim=1, keepdim=True)  # finite rewards per group
    r0_GS = torch.where(valid_GS, r_GS, torch.zeros_like(r_GS))
    mean_G = r0_GS.sum(dim=1, keepdim=True) / n_G.clamp(min=1)
    centred_GS = torch.where(valid_GS, r_GS - mean_G, torch.zeros_like(r_GS))
    if scale == "group":
        var_G = centred_GS.pow(2).sum(dim=1, keepdim=True) / (n_G - 1).clamp(min=1)
        adv_GS = centred_GS / (var_G.sqrt() + eps)
    elif scale == "batch":
        finite = r_GS[valid_GS]
        std = finite.std(unbiased=True) if finite.numel() > 1 else finite.new_tensor(0.0)
        adv_GS = centred_GS / (std + eps)
    else:
        adv_GS = centred_GS
    # exactly 0 where the group's finite rewards are all equal (max == min), whatever the rounding
    hi_G = torch.where(valid_GS, r_GS, torch.full_like(r_GS, -math.inf)).amax(dim=1, keepdim=True)
    lo_G = torch.where(valid_GS, r_GS, torch.full_like(r_GS, math.inf)).amin(dim=1, keepdim=True)
    signal_G = (n_G >= 2) & (hi_G > lo_G)
    adv_GS = torch.where(valid_GS & signal_G, adv_GS, torch.zeros_like(adv_GS))
    return adv_GS.reshape(-1).float()


def zero_variance_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose finite rewards are all equal (or fewer than two): they carry no signal."""
    r_GS = rewards.detach().float().view(-1, group_size)
    valid_GS = torch.isfinite(r_GS)
    hi = torch.where(valid_GS, r_GS, torch.full_like(r_GS, -float("inf"))).amax(dim=1)
    lo = torch.where(valid_GS, r_GS, torch.full_like(r_GS, float("inf"))).amin(dim=1)
    flat = (valid_GS.sum(dim=1) < 2) | (hi == lo)
    return flat.float().mean().item()


K3_LOG_RATIO_CLAMP = 20.0


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL").

    With d = logp − ref_logp:  k1 = d;  k2 = ½ d²;  k3 = exp(−d) − (−d) − 1 = exp(ref − logp) − (ref − logp) − 1.
    k3 is unbiased and never negative. Shapes broadcast; returns the broadcast shape.

    k3's log-ratio ref − logp is clamped to ±:data:`K3_LOG_RATIO_CLAMP` (20, as verl does): past
    it exp overflows fp32 (at 88) and one inf token would skip the whole step; a clamped token
    keeps a finite penalty and pushes no KL gradient. k1 as a *loss term* has zero expected
    gradient (E_π[∇ log π] = 0): it only measures KL; use k2 or k3 to penalise it (the config warns).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp).pow(2)
    if estimator == "k3":
        log_ratio = (ref_logp - logp).clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: Optional[float] = None,
) -> torch.Tensor:
    """PPO clipped surrogate, per token.

    ρ = exp(logp − old_logp);  ℓ = max(−A·ρ, −A·clip(ρ, 1 − eps_low, 1 + eps_high)).
    With ``dual_clip`` c (Ye et al. 2020), for A < 0: ℓ = min(ℓ, −c·A), bounding the loss when ρ ≫ 1.
    ``logp``/``old_logp`` are ``[B, T]``; ``advantages`` broadcasts (``[B, 1]`` or ``[B, T]``).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bounded = torch.minimum(loss, -dual_clip * advantages)
        loss = torch.where(advantages < 0, bounded, loss)
    return loss


def clip_fraction(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2
) -> torch.Tensor:
    """Fraction of unmasked tokens whose ratio lies outside [1 − eps_low, 1 + eps_high]."""
    ratio = torch.exp(logp - old_logp)
    outside = ((ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)).float()
    m = mask.float()
    return (outside * m).sum() / m.sum().clamp(min=1)


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    num_tokens: Optional[float] = None,
    max_len: Optional[int] = None,
    num_seqs: Optional[float] = None,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar over the tokens where ``mask`` is 1.

    - ``"seq_mean_token_mean"`` (GRPO paper): (1/B) Σ_b (Σ_t m ℓ / Σ_t m); a row with no tokens
      contributes 0. Pass ``num_seqs`` (the global number of sequences) to divide by it instead of
      the local B, so micro-batch losses add up to the full-batch loss.
    - ``"token_mean"`` (DAPO): Σ m ℓ / Σ m, or / ``num_tokens`` when the global token count is given.
    - ``"seq_mean_token_sum_norm"`` (Dr. GRPO): Σ m ℓ / (B · max_len); ``max_len`` defaults to T,
      and ``num_seqs`` replaces B when given.
    """
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if mode == "token_mean":
        denom = m.sum().clamp(min=1) if num_tokens is None else num_tokens
        return masked.sum() / denom
    batch = per_token.shape[0] if num_seqs is None else num_seqs
    if mode == "seq_mean_token_mean":
        seq_mean = masked.sum(dim=-1) / m.sum(dim=-1).clamp(min=1)
        return seq_mean.sum() / batch
    if mode == "seq_mean_token_sum_norm":
        length = per_token.shape[-1] if max_len is None else max_len
        return masked.sum() / (batch * length)
    raise ValueError(f"unknown aggregation {mode!r}; use one of {', '.join(_AGG_MODES)}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ m·v / Σ m (0 when the mask is empty)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def combine_rewards(
    scores: torch.Tensor,
    strategy: str,
    weights: Optional[torch.Tensor | Sequence[float]] = None,
    categories: Optional[torch.Tensor | Sequence[int]] = None,
) -> torch.Tensor:
    """Combine the K shadow-reward scores ``[N, K]`` into one reward ``[N]``.

    - ``"linear"``: r_i = Σ_k w_k s_ik, with w = 1/K when ``weights`` is None.
    - ``"categorized"``: r_i = s_{i, c_i}, each prompt scored by the RM of its own category
      ``categories[i]`` (an index in [0, K)).
    NaN scores propagate (an unscored sample stays NaN and later gets advantage 0).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, K], got shape {tuple(scores.shape)}")
    n, k = scores.shape
    if strategy == "linear":
        if weights is None:
            w_K = scores.new_full((k,), 1.0 / k)
        else:
            w_K = torch.as_tensor(weights, dtype=scores.dtype, device=scores.device)
            if w_K.shape != (k,):
                raise ValueError(f"weights must have K={k} entries, got shape {tuple(w_K.shape)}")
        return scores @ w_K
    if strategy == "categorized":
        if categories is None:
            raise ValueError("categorized rewards need the category index of each sample")
        c_N = torch.as_tensor(categories, dtype=torch.long, device=scores.device)
        if c_N.shape != (n,):
            raise ValueError(f"categories must have N={n} entries, got shape {tuple(c_N.shape)}")
        if n and (c_N.min() < 0 or c_N.max() >= k):
            raise ValueError(f"category indices must lie in [0, {k})")
        return scores.gather(1, c_N[:, None]).squeeze(1)
    raise ValueError(f"unknown reward strategy {strategy!r}; use 'linear' or 'categorized'")


BENIGN = -1  # column index of a benign prompt in route_rewards: it is answered, not refused


def route_rewards(
    harm_NK: torch.Tensor,
    columns_N: torch.Tensor | Sequence[int],
    strategy: str,
    weights: Optional[torch.Tensor | Sequence[float]] = None,
    helpful_N: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The routing rule: one reward ``[N]`` per sample from the K harm RMs' scores ``[N, K]`` and
    the helpfulness RM's scores ``[N]``.

    ``columns_N[i]`` is the harm category index k ∈ [0, K) of a harmful prompt, or
    :data:`BENIGN` (−1) for a benign one. For sample i::

        harmful, "linear":      r_i = Σ_k w_k s_ik   over the RMs with w_k > 0 (w = 1/K when None)
        harmful, "categorized": r_i = s_{i, c_i}     (the RM of the prompt's own category)
        benign (either):        r_i = h_i            (the helpfulness RM; NaN when there is none)

    An RM of weight 0 takes no part, so its NaN or inf cannot spread into the sum. NaN stays NaN
    ("unscored": advantage 0 later). Example, K = 2, w = (0.5, 0.5)::

        s = [[1, 3], [2, 0], [5, 5]], columns = [0, 1, -1], h = [9, 9, 7]
        linear      → [2, 1, 7];   categorized → [1, 0, 7]
    """
    if harm_NK.dim() != 2:
        raise ValueError(f"harm scores must be [N, K], got shape {tuple(harm_NK.shape)}")
    n, k = harm_NK.shape
    c_N = torch.as_tensor(columns_N, dtype=torch.long, device=harm_NK.device)
    if c_N.shape != (n,):
        raise ValueError(f"columns must have N={n} entries, got shape {tuple(c_N.shape)}")
    if n and (c_N.min() < BENIGN or c_N.max() >= k):
        raise ValueError(f"columns must lie in [0, {k}) or be BENIGN ({BENIGN})")
    harmful_N = c_N != BENIGN
    if strategy == "linear":
        w_K = harm_NK.new_full((k,), 1.0 / k) if weights is None else \
            torch.as_tensor(weights, dtype=harm_NK.dtype, device=harm_NK.device)
        if w_K.shape != (k,):
            raise ValueError(f"weights must have K={k} entries, got shape {tuple(w_K.shape)}")
        used_K = w_K != 0
        harm_N = harm_NK[:, used_K] @ w_K[used_K]
    elif strategy == "categorized":
        harm_N = harm_NK.gather(1, c_N.clamp(min=0)[:, None]).squeeze(1)
    else:
        raise ValueError(f"unknown reward strategy {strategy!r}; use 'linear' or 'categorized'")
    if helpful_N is None:
        help_N = torch.full((n,), float("nan"), dtype=harm_NK.dtype, device=harm_NK.device)
    else:
        help_N = torch.as_tensor(helpful_N, dtype=harm_NK.dtype, device=harm_NK.device)
        if help_N.shape != (n,):
            raise ValueError(f"helpfulness scores must be [N={n}], got shape {tuple(help_N.shape)}")
    return torch.where(harmful_N, harm_N, help_N)
