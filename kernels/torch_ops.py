"""Tile math for log-probs in plain torch: the reference backend, any device.

A *tile* is a 2-D block of logits ``[n, v]`` (rows = tokens, columns = a contiguous
vocabulary range ``[v0, v0 + v)``). Targets are given *local* to the tile, ``t - v0``,
and may fall outside ``[0, v)``: that row's target lives in another tile.

Two operations, with the same signatures as the Triton launchers in ``triton_ops``,
so the chunk drivers in ``functions.py`` run on either backend:

- :func:`tile_stats` — per row of ``z = cap(logits) / T`` (fp32): the tile's log-normaliser
  ``lse_tile = log Σ_j exp(z_j)``, ``tgt = z[t]`` (``-inf`` when ``t`` is outside the
  tile) and, for entropy, ``mean_z = Σ_j softmax(z)_j z_j``.
- :func:`tile_grad` — ``grad = c · (onehot(t) − exp(z − lse)) · cap'(logits)`` with the
  *global* ``lse`` and ``c = dL/dlogp / T``, written into ``out`` (which may be the tile).

``cap`` is the optional logit soft-capping of Gemma-2/3, ``cap(x) = s · tanh(x / s)`` with
``cap'(x) = 1 − tanh²(x / s)``; ``softcap = 0`` means none (``cap(x) = x``).

Speed on CPU comes from three choices, measured on the 2-core benchmark machine:
the exponentials run inside ``torch._softmax`` / ``torch._log_softmax`` (vectorized
fused kernels, ~2× faster than ``exp_`` plus reductions), the fp32 working tiles live in
a workspace reused across tiles (fresh multi-MiB allocations page-fault on every
call), and the max runs on the low-precision tile (half the bytes).
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")


def tile_workspace(numel: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two flat fp32 buffers of ``numel`` elements, reused by every tile of one call."""
    return (torch.empty(numel, dtype=torch.float32, device=device),
            torch.empty(numel, dtype=torch.float32, device=device))


def _views(work, n: int, v: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, v]`` contiguous fp32 views of the workspace (allocated when none is given)."""
    if work is None:
        work = tile_workspace(n * v, device)
    return work[0][: n * v].view(n, v), work[1][: n * v].view(n, v)


def _scaled_fp32(tile_nv: torch.Tensor, inv_temp: float, z_nv: torch.Tensor, softcap: float = 0.0) -> torch.Tensor:
    """``z = cap(tile) / T`` into the fp32 buffer ``z_nv`` (upcast first: no bf16 multiply)."""
    z_nv.copy_(tile_nv)
    if softcap:
        z_nv.div_(softcap).tanh_().mul_(softcap)
    if inv_temp != 1.0:
        z_nv.mul_(inv_temp)
    return z_nv


def _neutralise_dead_rows_(z_nv: torch.Tensor, dead_n: torch.Tensor) -> None:
    """Zero rows that are entirely ``-inf`` (softmax would return NaN for them).

    On CPU the check is free, so the fill runs only when needed; elsewhere it always
    runs, to avoid a device-to-host sync per tile.
    """
    if z_nv.device.type != "cpu" or bool(dead_n.any()):
        z_nv.masked_fill_(dead_n.unsqueeze(1), 0.0)


def _gather_target(tile_nv: torch.Tensor, t_local_n: torch.Tensor, inv_temp: float, softcap: float = 0.0) -> torch.Tensor:
    """``cap(tile[r, t_r]) / T`` in fp32 where ``0 <= t_r < v``, else ``-inf`` (no dynamic shapes)."""
    v = tile_nv.shape[1]
    inside_n = (t_local_n >= 0) & (t_local_n < v)
    picked_n = tile_nv.gather(1, t_local_n.clamp(0, v - 1).unsqueeze(1)).squeeze(1).float()
    if softcap:
        picked_n = torch.tanh(picked_n / softcap) * softcap
    return torch.where(inside_n, picked_n * inv_temp, _NEG_INF)


def tile_stats(
    tile_nv: torch.Tensor,
    t_local_n: torch.Tensor,
    inv_temp: float,
    want_entropy: bool,
    work=None,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Row statistics of ``z = cap(tile) / T`` in fp32.

    Args:
        tile_nv: logits ``[n, v]``, any float dtype; not modified.
        t_local_n: ``[n]`` long, target column local to this tile (may be out of range).
        inv_temp: ``1 / T``.
        want_entropy: also return ``mean_z = Σ_j softmax(z)_j z_j``.
        work: optional workspace from :func:`tile_workspace` (≥ ``n·v`` elements).
        softcap: ``s`` of the soft-capping ``s·tanh(x/s)`` applied before ``/ T``; 0: none.

    Returns:
        ``(lse_tile_n, tgt_n, mean_z_n | None)``, fp32 ``[n]``.

    ``lse_tile = max(z) − max_j log_softmax(z)_j``: the log-softmax at the argmax is
    exactly ``−log Σ exp(z − max)``, so no separate exp/sum pass is needed. Rows that
    are entirely ``-inf`` get ``lse_tile = -inf`` (and no NaN).
    """
    n, v = tile_nv.shape
    z_nv, ls_nv = _views(work, n, v, tile_nv.device)
    m_n = tile_nv.amax(dim=1).float()
    if softcap:  # cap is increasing: the capped max is the max of the capped row (-inf → -s, never dead)
        m_n = torch.tanh(m_n / softcap) * softcap
    m_n = m_n * inv_temp
    dead_n = m_n == _NEG_INF
    _neutralise_dead_rows_(_scaled_fp32(tile_nv, inv_temp, z_nv, softcap), dead_n)
    if want_entropy:
        p_nv = torch._softmax(z_nv, 1, False, out=ls_nv)
        lse_n = m_n - p_nv.amax(dim=1).log()
        # Σ p·z: masked entries have p = 0 and z = -inf; clamping z to the finite range
        # makes their product 0 instead of NaN (a NaN logit still propagates).
        z_nv.clamp_(min=torch.finfo(torch.float32).min)
        mean_z = p_nv.mul_(z_nv).sum(dim=1)
    else:
        ls_nv = torch._log_softmax(z_nv, 1, False, out=ls_nv)
        lse_n = m_n - ls_nv.amax(dim=1)
        mean_z = None
    lse_n = torch.where(dead_n, _NEG_INF, lse_n)
    return lse_n, _gather_target(tile_nv, t_local_n, inv_temp, softcap), mean_z


def tile_grad(
    tile_nv: torch.Tensor,
    t_local_n: torch.Tensor,
    lse_tile_n: torch.Tensor,
    lse_n: torch.Tensor,
    coef_n: torch.Tensor,
    inv_temp: float,
    out_nv: torch.Tensor,
    work=None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """``out = c · (onehot(t) − exp(cap(tile)/T − lse)) · cap'(tile)``, the gradient w.r.t. the logits tile.

    Args:
        tile_nv: logits ``[n, v]``; may be the same tensor as ``out_nv``.
        t_local_n: ``[n]`` long, local target column (out of range: no one-hot term).
        lse_tile_n: ``[n]`` fp32, this tile's log-normaliser (from :func:`tile_stats`).
        lse_n: ``[n]`` fp32, log-normaliser over the *whole* vocabulary.
        coef_n: ``[n]`` fp32, ``dL/dlogp / T``.
        inv_temp: ``1 / T``.
        out_nv: ``[n, v]`` output in the gradient's dtype.
        work: optional workspace from :func:`tile_workspace`.
        softcap: the soft-capping ``s`` (0: none); its derivative ``1 − (cap(x)/s)²`` multiplies the result.

    ``exp(z − lse) = softmax_tile(z) · exp(lse_tile − lse)``, so the row factor
    ``−c·exp(lse_tile − lse)`` scales the tile softmax, then ``+c`` is added at the
    target — in fp32, *before* rounding to ``out``'s dtype: when the target's
    probability is near 1, ``1 − p`` cancels and must not be formed in bf16.
    """
    n, v = tile_nv.shape
    z_nv, p_nv = _views(work, n, v, tile_nv.device)
    dead_n = lse_tile_n == _NEG_INF  # all -inf rows: zero probability, only the one-hot
    _neutralise_dead_rows_(_scaled_fp32(tile_nv, inv_temp, z_nv, softcap), dead_n)
    torch._softmax(z_nv, 1, False, out=p_nv)
    scale_n = torch.where(dead_n, 0.0, -coef_n * torch.exp(lse_tile_n - lse_n))
    p_nv.mul_(scale_n.unsqueeze(1))
    inside_n = (t_local_n >= 0) & (t_local_n < v)
    p_nv.scatter_add_(1, t_local_n.clamp(0, v - 1).unsqueeze(1), (coef_n * inside_n).unsqueeze(1))
    if softcap:  # chain rule through s·tanh(x/s): z / (s/T) = tanh(x/s)
        p_nv.mul_(z_nv.mul_(1.0 / (softcap * inv_temp)).square_().neg_().add_(1.0))
    return out_nv.copy_(p_nv)
