"""Triton kernels for tile log-prob statistics and gradients, and their launchers.

Layers (Liger-Kernel style): ``@triton.jit`` kernel → launcher (grid, block size,
contiguity) → the autograd Functions in ``functions.py``, which take this module as
their ``ops``. The launchers have the same signatures as ``torch_ops.tile_stats`` /
``torch_ops.tile_grad``, so the same chunk drivers run on both backends.

One program handles one row of a tile and loops over its columns in blocks of
``BLOCK``, keeping an *online* log-sum-exp (running max ``m``, running
``s = Σ exp(z − m)``, rescaled by ``exp(m_old − m_new)`` when the max grows), so a
row of any length runs in registers. Loads are upcast to fp32 right after
``tl.load`` and all math is fp32 (also what the CPU interpreter needs: it stores bf16
as raw bits). There is no ``tl.dot``: the matmuls of the fused linear path are
cuBLAS calls made by the driver, whose chunk logits these kernels then consume.

This module imports triton at import time; the package imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    """tanh via exp (no libdevice on every backend): 1 − 2/(e^{2x} + 1); ±inf give ±1, no NaN."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _tile_stats_kernel(
    z_ptr, z_row_stride, t_ptr, lse_ptr, tgt_ptr, mean_z_ptr,
    n_cols, inv_temp, softcap,
    WANT_ENTROPY: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per row r of z = cap(logits) / T: lse[r], tgt[r] = z[r, t_r] (or -inf), mean_z[r]."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_row_stride
    t = tl.load(t_ptr + row)

    m = float("-inf")  # running max
    s = 0.0  # Σ exp(z - safe(m))
    w = 0.0  # Σ exp(z - safe(m)) · z
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            z = softcap * _tanh(z / softcap)
        z = tl.where(mask, z * inv_temp, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # A block of only -inf keeps m_new = -inf: use 0 as the reference, never -inf - -inf.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp(m - m_ref)  # 0 while m is still -inf
        e = tl.exp(z - m_ref)
        s = s * rescale + tl.sum(e, axis=0)
        if WANT_ENTROPY:
            w = w * rescale + tl.sum(e * tl.where(e > 0.0, z, 0.0), axis=0)
        m = m_new

    m_ref = tl.where(m == float("-inf"), 0.0, m)
    tl.store(lse_ptr + row, m_ref + tl.log(s))
    inside = (t >= 0) & (t < n_cols)
    z_t = tl.load(z_row + t, mask=inside, other=0.0).to(tl.float32)
    if SOFTCAP:
        z_t = softcap * _tanh(z_t / softcap)
    tl.store(tgt_ptr + row, tl.where(inside, z_t * inv_temp, float("-inf")))
    if WANT_ENTROPY:
        tl.store(mean_z_ptr + row, w / s)


@triton.jit
def _tile_grad_kernel(
    z_ptr, z_row_stride, out_ptr, out_row_stride, t_ptr, lse_ptr, coef_ptr,
    n_cols, inv_temp, softcap,
    SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[r, j] = coef[r] · (1[j == t_r] − exp(cap(z[r, j]) / T − lse[r])) · cap'(z[r, j]); out may alias z."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_row_stride
    out_row = out_ptr + row * out_row_stride
    t = tl.load(t_ptr + row)
    lse = tl.load(lse_ptr + row)
    c = tl.load(coef_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < n_cols
        z = tl.load(z_row + cols, mask=mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            th = _tanh(z / softcap)
            p = tl.exp(softcap * th * inv_temp - lse)
            g = c * (tl.where(cols == t, 1.0, 0.0) - p) * (1.0 - th * th)
        else:
            p = tl.exp(z * inv_temp - lse)
            g = c * (tl.where(cols == t, 1.0, 0.0) - p)
        tl.store(out_row + cols, g.to(out_ptr.dtype.element_ty), mask=mask)


def _block(n_cols: int) -> tuple[int, int]:
    """Column block (power of two, ≤ 4096) and warps for a row of ``n_cols``."""
    block = min(4096, triton.next_power_of_2(max(n_cols, 16)))
    return block, (8 if block >= 2048 else 4)


def _unit_col_stride(x: torch.Tensor) -> torch.Tensor:
    """Kernels index ``row * row_stride + col``: columns must be contiguous."""
    return x if x.stride(1) == 1 else x.contiguous()


def tile_workspace(numel: int, device: torch.device) -> None:
    """The kernels keep everything in registers: no workspace."""
    del numel, device


def tile_stats(
    tile_nv: torch.Tensor,
    t_local_n: torch.Tensor,
    inv_temp: float,
    want_entropy: bool,
    work=None,
    softcap: float = 0.0,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launch ``_tile_stats_kernel``; same contract as ``torch_ops.tile_stats``.

    ``out`` optionally gives the three fp32 ``[n]`` result buffers (lse, tgt, mean_z);
    ``work`` is accepted for signature parity.
    """
    del work
    tile = _unit_col_stride(tile_nv)
    n, v = tile.shape
    t = t_local_n.contiguous()
    if out is None:
        out = tuple(torch.empty(n, dtype=torch.float32, device=tile.device) for _ in range(3))
    lse_n, tgt_n, mean_z_n = out
    if n > 0:
        block, warps = _block(v)
        _tile_stats_kernel[(n,)](
            tile, tile.stride(0), t, lse_n, tgt_n, mean_z_n, v, float(inv_temp), float(softcap or 1.0),
            WANT_ENTROPY=want_entropy, SOFTCAP=bool(softcap), BLOCK=block, num_warps=warps,
        )
    return lse_n, tgt_n, (mean_z_n if want_entropy else None)


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
    """Launch ``_tile_grad_kernel``; same contract as ``torch_ops.tile_grad``.

    ``out_nv`` may be the tile itself (each program reads a block before writing it).
    The kernel uses the global ``lse`` directly, so ``lse_tile_n`` and ``work`` are
    unused (kept for signature parity).
    """
    del lse_tile_n, work
    tile = _unit_col_stride(tile_nv)
    out = out_nv if out_nv.stride(1) == 1 else torch.empty_like(out_nv, memory_format=torch.contiguous_format)
    n, v = tile.shape
    if n > 0:
        block, warps = _block(v)
        _tile_grad_kernel[(n,)](
            tile, tile.stride(0), out, out.stride(0), t_local_n.contiguous(),
            lse_n.contiguous(), coef_n.contiguous(), v, float(inv_temp), float(softcap or 1.0),
            SOFTCAP=bool(softcap), BLOCK=block, num_warps=warps,
        )
    if out is not out_nv:
        out_nv.copy_(out)
    return out_nv
