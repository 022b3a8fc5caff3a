"""Autograd Functions: chunk drivers shared by the torch and Triton backends.

Both Functions take ``ops``, a module with ``tile_stats`` / ``tile_grad``
(``torch_ops`` or ``triton_ops``), and loop over tiles of the logits so no
temporary grows with the full ``[N, V]``.

Notation: ``z = cap(logits) / T`` (``cap`` the optional soft-capping ``s·tanh(x/s)``, identity
when ``softcap = 0``); ``lse_r = log Σ_j exp(z_rj)``; ``logp_r = z_{r,t_r} − lse_r``;
``entropy_r = lse_r − Σ_j p_rj z_rj``; ``dlogp_r/dlogits_rj = (1[j = t_r] − p_rj) · cap'(logits_rj) / T``.
"""

from __future__ import annotations

import contextlib
from types import ModuleType

import torch
from torch.autograd.function import once_differentiable

_NEG_INF = float("-inf")


def _no_autocast(t: torch.Tensor):
    """The drivers pick dtypes themselves (out= buffers); an outer autocast must not recast."""
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def _spans(total: int, step: int):
    """``(start, stop)`` pairs covering ``range(total)`` in steps of ``step``."""
    return [(a, min(a + step, total)) for a in range(0, total, step)]


class SelectiveLogprobsFn(torch.autograd.Function):
    """``(logp_N, entropy_N)`` from materialized logits ``[N, V]``, chunked over rows.

    Saves ``logits`` (an input, no copy) and ``lse_N``; backward recomputes the
    softmax per row chunk and writes ``grad_logits`` in the logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits_NV, targets_N, inv_temp, want_entropy, chunk_rows, ops: ModuleType, softcap=0.0):
        n_rows, n_voc = logits_NV.shape
        lse_N = torch.empty(n_rows, dtype=torch.float32, device=logits_NV.device)
        logp_N = torch.empty_like(lse_N)
        ent_N = torch.empty_like(lse_N) if want_entropy else lse_N.new_empty(0)
        work = ops.tile_workspace(min(chunk_rows, n_rows) * n_voc, logits_NV.device)
        with _no_autocast(logits_NV):
            for r0, r1 in _spans(n_rows, chunk_rows):
                lse, tgt, mean_z = ops.tile_stats(logits_NV[r0:r1], targets_N[r0:r1], inv_temp, want_entropy, work,
                                                  softcap=softcap)
                lse_N[r0:r1] = lse
                torch.sub(tgt, lse, out=logp_N[r0:r1])
                if want_entropy:
                    torch.sub(lse, mean_z, out=ent_N[r0:r1])
        ctx.save_for_backward(logits_NV, targets_N, lse_N)
        ctx.inv_temp, ctx.chunk_rows, ctx.ops, ctx.softcap = inv_temp, chunk_rows, ops, softcap
        ctx.mark_non_differentiable(ent_N)
        return logp_N, ent_N

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp_N, _grad_ent):
        if grad_logp_N is None or not ctx.needs_input_grad[0]:
            return (None,) * 7
        logits_NV, targets_N, lse_N = ctx.saved_tensors
        n_rows, n_voc = logits_NV.shape
        coef_N = grad_logp_N.float() * ctx.inv_temp
        grad_NV = torch.empty(logits_NV.shape, dtype=logits_NV.dtype, device=logits_NV.device)
        work = ctx.ops.tile_workspace(min(ctx.chunk_rows, n_rows) * n_voc, logits_NV.device)
        with _no_autocast(logits_NV):
            for r0, r1 in _spans(n_rows, ctx.chunk_rows):
                lse = lse_N[r0:r1]  # one tile spans the whole row: tile lse = global lse
                ctx.ops.tile_grad(logits_NV[r0:r1], targets_N[r0:r1], lse, lse, coef_N[r0:r1],
                                  ctx.inv_temp, grad_NV[r0:r1], work, softcap=ctx.softcap)
        return grad_NV, None, None, None, None, None, None


class _Scratch:
    """Buffers reused by every tile of one fused call (fresh big allocations page-fault).

    ``tile`` holds the chunk logits / logit-gradients in the input dtype; ``part_h`` and
    ``part_w`` hold one GEMM's partial gradient before it is added to an fp32
    accumulator; ``work`` is the backend's fp32 workspace (None for Triton).
    """

    def __init__(self, ops, chunk_tokens, chunk_vocab, n_hid, dtype, device):
        elems = chunk_tokens * chunk_vocab
        self.tile = torch.empty(elems, dtype=dtype, device=device)
        self.work = ops.tile_workspace(elems, device)
        self.part_h = torch.empty(chunk_tokens * n_hid, dtype=dtype, device=device)
        self.part_w = torch.empty(chunk_vocab * n_hid, dtype=dtype, device=device)

    def logits(self, h_nH, w_vH, b_v):
        """``h @ wᵀ (+ b)`` into the tile buffer, in the inputs' dtype (fp32 GEMM accumulation)."""
        out = self.tile[: h_nH.shape[0] * w_vH.shape[0]].view(h_nH.shape[0], w_vH.shape[0])
        if b_v is None:
            return torch.mm(h_nH, w_vH.t(), out=out)
        return torch.addmm(b_v, h_nH, w_vH.t(), out=out)


def _accumulate_mm_(acc_fp32: torch.Tensor, a: torch.Tensor, b: torch.Tensor, part: torch.Tensor) -> None:
    """``acc += a @ b`` into an fp32 buffer; a low-precision product rounds once, in ``part``."""
    if a.dtype == torch.float32:
        acc_fp32.addmm_(a, b)
    else:
        acc_fp32.add_(torch.mm(a, b, out=part[: acc_fp32.numel()].view(acc_fp32.shape)))


def _merge_tile_(lse_n, tgt_n, mean_z_n, tile_lse_n, tile_tgt_n, tile_mean_z_n) -> None:
    """Fold one vocabulary tile's statistics into the running ones, in place.

    ``lse' = logaddexp(lse, lse_tile)``; ``tgt' = max(tgt, tgt_tile)`` (the target is in
    exactly one tile, the others report ``-inf``); the softmax-weighted mean of ``z``
    is rescaled: ``mean' = mean·exp(lse − lse') + mean_tile·exp(lse_tile − lse')``.
    """
    new_n = torch.logaddexp(lse_n, tile_lse_n)
    if mean_z_n is not None:
        ref_n = torch.where(new_n == _NEG_INF, 0.0, new_n)  # all -inf so far: no NaN
        mean_z_n.mul_(torch.exp(lse_n - ref_n)).add_(torch.exp(tile_lse_n - ref_n) * tile_mean_z_n)
    lse_n.copy_(new_n)
    torch.maximum(tgt_n, tile_tgt_n, out=tgt_n)


class FusedLinearLogprobsFn(torch.autograd.Function):
    """``(logp_N, entropy_N)`` for ``logits = hidden @ weightᵀ + bias``, never all at once.

    Tiles are ``[chunk_tokens, chunk_vocab]``, visited vocabulary-major. Forward keeps an
    online log-sum-exp over vocabulary tiles and saves the inputs, ``lse_N`` and the
    per-tile log-normalisers ``lse_tiles [V/chunk_vocab, N]`` (small; the torch backend
    rescales each tile's softmax with them instead of recomputing exponentials).
    Backward recomputes each tile, turns it in place into ``grad_z = c·(onehot − p)``
    (``c = g/T``) and accumulates::

        grad_hidden[n]  += grad_z @ weight[v]      (fp32 buffer [N, H])
        grad_weight[v]  += grad_zᵀ @ hidden[n]     (one GEMM when one token chunk
                                                     covers N, else an fp32 [v, H] buffer)
        grad_bias[v]    += Σ_n grad_z

    Peak extra memory is O(tile + N·H + chunk_vocab·H), independent of N·V.
    """

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, bias_V, targets_N, inv_temp, want_entropy,
                chunk_tokens, chunk_vocab, ops: ModuleType, softcap=0.0):
        n_tok, n_voc = hidden_NH.shape[0], weight_VH.shape[0]
        chunk_tokens, chunk_vocab = max(1, min(chunk_tokens, n_tok)), max(1, min(chunk_vocab, n_voc))
        f32 = dict(dtype=torch.float32, device=hidden_NH.device)
        lse_N = torch.full((n_tok,), _NEG_INF, **f32)
        tgt_N = torch.full((n_tok,), _NEG_INF, **f32)
        mean_z_N = torch.zeros(n_tok, **f32) if want_entropy else None
        vocab_spans = _spans(n_voc, chunk_vocab)
        lse_tiles = torch.empty(len(vocab_spans), n_tok, **f32)
        scratch = _Scratch(ops, chunk_tokens, chunk_vocab, hidden_NH.shape[1], hidden_NH.dtype, hidden_NH.device)
        with _no_autocast(hidden_NH):
            for vi, (v0, v1) in enumerate(vocab_spans):
                b_v = None if bias_V is None else bias_V[v0:v1]
                for n0, n1 in _spans(n_tok, chunk_tokens):
                    tile = scratch.logits(hidden_NH[n0:n1], weight_VH[v0:v1], b_v)
                    stats = ops.tile_stats(tile, targets_N[n0:n1] - v0, inv_temp, want_entropy, scratch.work,
                                           softcap=softcap)
                    lse_tiles[vi, n0:n1] = stats[0]
                    mean_z_n = None if mean_z_N is None else mean_z_N[n0:n1]
                    _merge_tile_(lse_N[n0:n1], tgt_N[n0:n1], mean_z_n, *stats)
        ctx.save_for_backward(hidden_NH, weight_VH, bias_V, targets_N, lse_N, lse_tiles)
        ctx.inv_temp, ctx.chunks, ctx.ops, ctx.softcap = inv_temp, (chunk_tokens, chunk_vocab), ops, softcap
        ent_N = lse_N - mean_z_N if want_entropy else lse_N.new_empty(0)
        ctx.mark_non_differentiable(ent_N)
        return tgt_N - lse_N, ent_N

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp_N, _grad_ent):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if grad_logp_N is None or not (need_h or need_w or need_b):
            return (None,) * 10
        hidden_NH, weight_VH, bias_V, targets_N, lse_N, lse_tiles = ctx.saved_tensors
        with _no_autocast(hidden_NH):
            grads = _fused_backward(
                hidden_NH, weight_VH, bias_V, targets_N, lse_N, lse_tiles,
                grad_logp_N.float() * ctx.inv_temp, ctx.inv_temp, *ctx.chunks, ctx.ops, (need_h, need_w, need_b),
                ctx.softcap,
            )
        return (*grads, None, None, None, None, None, None, None)


def _fused_backward(hidden_NH, weight_VH, bias_V, targets_N, lse_N, lse_tiles, coef_N, inv_temp,
                    chunk_tokens, chunk_vocab, ops, needs, softcap=0.0):
    """Tile loop of :class:`FusedLinearLogprobsFn` backward; returns (gh, gw, gb)."""
    need_h, need_w, need_b = needs
    n_tok, n_voc, n_hid = hidden_NH.shape[0], weight_VH.shape[0], hidden_NH.shape[1]
    dev = hidden_NH.device
    scratch = _Scratch(ops, chunk_tokens, chunk_vocab, n_hid, hidden_NH.dtype, dev)
    grad_h_acc = torch.zeros(n_tok, n_hid, dtype=torch.float32, device=dev) if need_h else None
    token_spans = _spans(n_tok, chunk_tokens)
    # Every grad_w row block is written by a GEMM below, unless there are no tokens at all.
    new_w = torch.empty if token_spans else torch.zeros
    grad_w = new_w(weight_VH.shape, dtype=weight_VH.dtype, device=dev) if need_w else None
    grad_b_acc = torch.zeros(n_voc, dtype=torch.float32, device=dev) if need_b else None
    grad_w_acc = None
    if need_w and len(token_spans) > 1:
        grad_w_acc = torch.empty(chunk_vocab, n_hid, dtype=torch.float32, device=dev)
    for vi, (v0, v1) in enumerate(_spans(n_voc, chunk_vocab)):
        w_v = weight_VH[v0:v1]
        b_v = None if bias_V is None else bias_V[v0:v1]
        acc_w = None if grad_w_acc is None else grad_w_acc[: v1 - v0].zero_()
        for n0, n1 in token_spans:
            h_n = hidden_NH[n0:n1]
            tile = scratch.logits(h_n, w_v, b_v)
            ops.tile_grad(tile, targets_N[n0:n1] - v0, lse_tiles[vi, n0:n1], lse_N[n0:n1],
                          coef_N[n0:n1], inv_temp, tile, scratch.work, softcap=softcap)
            if need_h:
                _accumulate_mm_(grad_h_acc[n0:n1], tile, w_v, scratch.part_h)
            if acc_w is not None:
                _accumulate_mm_(acc_w, tile.t(), h_n, scratch.part_w)
            elif need_w:
                torch.mm(tile.t(), h_n, out=grad_w[v0:v1])
            if need_b:
                grad_b_acc[v0:v1] += tile.sum(dim=0, dtype=torch.float32)
        if acc_w is not None:
            grad_w[v0:v1].copy_(acc_w)
    grad_h = grad_h_acc.to(hidden_NH.dtype) if need_h else None
    grad_b = grad_b_acc.to(bias_V.dtype) if need_b else None
    return grad_h, grad_w, grad_b
