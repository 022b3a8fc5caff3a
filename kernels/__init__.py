"""srmir_kernels — log-probs of chosen tokens without materializing fp32 softmax.

Public API::

    selective_logprobs(logits, targets, temperature=1.0, backend="auto", return_entropy=False,
                       softcap=None)
    fused_linear_logprobs(hidden, weight, targets, temperature=1.0, bias=None,
                          backend="auto", return_entropy=False, softcap=None)
    gathered_lm_head(module)   # ZeRO-3: gather lm_head weight/bias for the fused call

Both return fp32 ``log softmax(cap(logits) / T)[target]`` with the shape of ``targets``
(and, with ``return_entropy=True``, the fp32 entropy of ``softmax(cap(logits) / T)``, no
grad). ``cap`` is the optional final-logit soft-capping of Gemma-2/3,
``cap(x) = softcap · tanh(x / softcap)`` (None: no capping). A model that *scales* its logits
(Granite divides by ``logits_scaling``, Cohere multiplies by ``logit_scale``) needs no
argument: the scale folds into the temperature, ``T' = T / scale``. Inputs may be fp32, bf16 or fp16; math and accumulation are fp32; gradients
come back in each input's dtype.

Backends: ``"triton"`` (CUDA tensors; CPU tensors only when ``TRITON_INTERPRET=1`` was
set before triton was imported), ``"torch"`` (chunked reference, any device,
memory-bounded), ``"auto"`` (triton for CUDA tensors when triton imports, else torch).
Triton is imported lazily, so this package imports without it.
"""

from __future__ import annotations

import math
import os
from types import ModuleType

import torch

from . import torch_ops
from .functions import FusedLinearLogprobsFn, SelectiveLogprobsFn
from .zero import gathered_lm_head

__all__ = ["selective_logprobs", "fused_linear_logprobs", "gathered_lm_head", "triton_available"]

_BACKENDS = ("auto", "triton", "torch")
_TILE_ELEMENTS = 1 << 22  # torch path: 4M-element (16 MiB fp32) working tiles


def triton_available() -> bool:
    """True when ``import triton`` succeeds (the kernels are compiled on first use)."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install: either way there is no triton path
        return False
    return True


def _triton_ops() -> ModuleType:
    from . import triton_ops  # lazy: pulls in triton

    return triton_ops


def _resolve_backend(backend: str, device: torch.device) -> ModuleType:
    """Pick the tile-ops module for ``backend`` and ``device``, or raise ValueError."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return torch_ops
    if backend == "auto":
        return _triton_ops() if device.type == "cuda" and triton_available() else torch_ops
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got {device.type}); on CPU set "
            "TRITON_INTERPRET=1 before triton is first imported, or use backend='torch'"
        )
    if not triton_available():
        raise ValueError("backend='triton' requested but triton is not installed; use backend='torch'")
    return _triton_ops()


def _inv_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return 1.0 / t


def _flat_targets(targets: torch.Tensor, lead_shape: torch.Size, vocab: int, what: str) -> torch.Tensor:
    """Check ``targets`` (shape ``lead_shape``, integer, in ``[0, vocab)``) and flatten to long."""
    if targets.shape != lead_shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal {what} {tuple(lead_shape)}")
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    flat = targets.reshape(-1).long()
    if flat.numel():
        lo, hi = torch.aminmax(flat)
        if int(lo) < 0 or int(hi) >= vocab:  # out-of-range ids would read out of bounds
            raise ValueError(f"targets must lie in [0, {vocab}), got min {int(lo)}, max {int(hi)}")
    return flat


def _softcap(softcap) -> float:
    if softcap is None:
        return 0.0
    s = float(softcap)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"softcap must be a finite number > 0 or None, got {softcap!r}")
    return s


def _check_float(name: str, x: torch.Tensor) -> None:
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise ValueError(f"{name} must be a float tensor (fp32/bf16/fp16), got {x.dtype}")


def selective_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    backend: str = "auto",
    return_entropy: bool = False,
    chunk_rows: int | None = None,
    softcap: float | None = None,
):
    """Log-probabilities of ``targets`` under ``softmax(logits / temperature)``.

    Args:
        logits: ``[..., V]`` float (fp32 / bf16 / fp16). A layout whose leading dims
            cannot be flattened into one row stride (e.g. ``logits[:, :-1]``) or whose
            last dim is strided is copied once.
        targets: ``[...]`` integer ids in ``[0, V)``.
        temperature: ``T > 0``; ``logp = z_t − logsumexp(z)`` with ``z = logits / T``.
        backend: ``"auto" | "triton" | "torch"`` (see the module docstring).
        return_entropy: also return ``H = logsumexp(z) − Σ softmax(z)·z`` (no grad).
        chunk_rows: rows per chunk of the torch path (default keeps the fp32
            working tile ≤ 4M elements); results do not depend on it.
        softcap: ``s`` of the soft-capping ``z = s·tanh(logits/s) / T``; None: no capping.

    Returns:
        fp32 ``logp`` shaped like ``targets``, differentiable w.r.t. ``logits``
        (``dlogp/dlogits = (onehot − softmax(z)) / T``); or ``(logp, entropy)``.
    """
    _check_float("logits", logits)
    vocab = logits.shape[-1]
    flat_t = _flat_targets(targets, logits.shape[:-1], vocab, "logits.shape[:-1]")
    ops = _resolve_backend(backend, logits.device)
    logits_NV = logits.reshape(-1, vocab)
    if chunk_rows is None:
        chunk_rows = logits_NV.shape[0] if ops is not torch_ops else _TILE_ELEMENTS // max(vocab, 1)
    logp_N, ent_N = SelectiveLogprobsFn.apply(
        logits_NV, flat_t, _inv_temperature(temperature), return_entropy, max(1, int(chunk_rows)), ops,
        _softcap(softcap),
    )
    logp = logp_N.view(targets.shape)
    return (logp, ent_N.view(targets.shape)) if return_entropy else logp


def _default_chunks(n_tok: int, n_voc: int, device: torch.device) -> tuple[int, int]:
    """Default tile ``[chunk_tokens, chunk_vocab]`` for the fused path.

    All tokens in one chunk when N allows (≤ 4096 on CPU, ≤ 16384 on GPU): each
    ``grad_weight`` block is then a single GEMM (one rounding, no fp32 accumulator); the
    vocabulary chunk then bounds the tile to 4M elements on CPU (16 MiB per fp32 working
    buffer, cache-friendly) and 32M on GPU (64 MiB bf16; few, large cuBLAS calls).
    """
    cuda = device.type == "cuda"
    chunk_tokens = max(1, min(n_tok, 16384 if cuda else 4096))
    budget = (1 << 25) if cuda else (1 << 22)
    chunk_vocab = max(1, min(n_voc, max(256, budget // chunk_tokens)))
    return chunk_tokens, chunk_vocab


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    backend: str = "auto",
    return_entropy: bool = False,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    softcap: float | None = None,
):
    """``selective_logprobs(hidden @ weightᵀ + bias, targets, T)`` without the full logits.

    Args:
        hidden: ``[..., H]`` float (fp32 / bf16 / fp16).
        weight: ``[V, H]``, same dtype as ``hidden`` (the lm_head weight; under ZeRO-3
            gather it first, see :func:`gathered_lm_head`).
        targets: ``[...]`` integer ids in ``[0, V)``, shape ``hidden.shape[:-1]``.
        temperature: ``T > 0``.
        bias: optional ``[V]``, same dtype.
        backend: ``"auto" | "triton" | "torch"``.
        return_entropy: also return the entropy (fp32, no grad).
        chunk_tokens, chunk_vocab: tile shape ``[chunk_tokens, chunk_vocab]`` (defaults:
            :func:`_default_chunks`). Temporaries: one tile in the input dtype, two fp32
            tiles (torch backend only), fp32 ``[N, H]`` and ``[chunk_vocab, H]``
            gradient accumulators. Results do not depend on them beyond rounding.
        softcap: ``s`` of the soft-capping ``s·tanh(logits/s)`` applied before ``/ T``; None: none.

    Returns:
        fp32 ``logp`` shaped like ``targets`` (or ``(logp, entropy)``), differentiable
        w.r.t. ``hidden``, ``weight`` and ``bias``; gradients in their dtypes.
    """
    _check_float("hidden", hidden)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got {tuple(weight.shape)}")
    n_voc = weight.shape[0]
    for name, x in (("weight", weight), ("bias", bias)):
        if x is not None and (x.dtype != hidden.dtype or x.device != hidden.device):
            raise ValueError(f"{name} must match hidden's dtype and device ({hidden.dtype}, {hidden.device}), "
                             f"got ({x.dtype}, {x.device})")
    if bias is not None and tuple(bias.shape) != (n_voc,):
        raise ValueError(f"bias must be [V] = [{n_voc}], got {tuple(bias.shape)}")
    flat_t = _flat_targets(targets, hidden.shape[:-1], n_voc, "hidden.shape[:-1]")
    ops = _resolve_backend(backend, hidden.device)
    hidden_NH = hidden.reshape(-1, hidden.shape[-1])
    d_tok, d_voc = _default_chunks(hidden_NH.shape[0], n_voc, hidden.device)
    chunk_tokens = max(1, int(chunk_tokens or d_tok))
    chunk_vocab = max(1, int(chunk_vocab or d_voc))
    logp_N, ent_N = FusedLinearLogprobsFn.apply(
        hidden_NH, weight, bias, flat_t, _inv_temperature(temperature), return_entropy,
        chunk_tokens, chunk_vocab, ops, _softcap(softcap),
    )
    logp = logp_N.view(targets.shape)
    return (logp, ent_N.view(targets.shape)) if return_entropy else logp
