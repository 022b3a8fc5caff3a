"""How close the kernels get to the device: bandwidth and TFLOP/s against measured baselines.

Two numbers, each against a baseline measured on the same device in the same process:

- ``selective_logprobs`` (Triton on CUDA) is bandwidth-bound: forward reads the logits once
  (``N·V·b`` bytes), forward+backward reads them twice and writes the gradient once
  (``3·N·V·b``). Achieved GB/s = bytes / median time, compared with ``dst.copy_(src)`` of
  the same tensor size (``2·N·V·b`` bytes moved: read + write).
- ``fused_linear_logprobs`` is GEMM-bound: forward ``2·N·H·V`` FLOPs, backward recomputes
  the logits (``2·N·H·V``) and runs two GEMMs (``4·N·H·V``): ``8·N·H·V`` in all.
  Achieved TFLOP/s = 8·N·H·V / median forward+backward time, compared with
  ``torch.mm`` at the fused path's tile shape ``[chunk_tokens, H] @ [H, chunk_vocab]``.

Usage::

    python bench/gpu_check.py                      # CUDA, N=16384 H=4096 V=128256, bf16
    python bench/gpu_check.py --device cpu         # smoke run of the same code (torch backend)

The table is printed last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import srmir_kernels as K

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _median_time(fn, device: str, repeats: int) -> float:
    """Median wall time of ``fn()`` after one warm-up call (compiles Triton kernels)."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bandwidth_rows(n: int, v: int, dtype: torch.dtype, device: str, backend: str, repeats: int) -> list[tuple]:
    """Rows (name, achieved GB/s, baseline GB/s) for selective_logprobs vs a device copy."""
    elem = torch.finfo(dtype).bits // 8
    logits = torch.randn(n, v, device=device, dtype=dtype)
    targets = torch.randint(0, v, (n,), device=device)
    dst = torch.empty_like(logits)
    t_copy = _median_time(lambda: dst.copy_(logits), device, repeats)
    copy_gbs = 2 * n * v * elem / t_copy / 1e9
    t_fwd = _median_time(lambda: K.selective_logprobs(logits, targets, backend=backend), device, repeats)
    leaf = logits.detach().requires_grad_()

    def fwd_bwd():
        leaf.grad = None
        K.selective_logprobs(leaf, targets, backend=backend).sum().backward()

    t_fb = _median_time(fwd_bwd, device, repeats)
    del dst, leaf
    return [
        ("selective fwd (read N·V)", n * v * elem / t_fwd / 1e9, copy_gbs),
        ("selective fwd+bwd (3·N·V)", 3 * n * v * elem / t_fb / 1e9, copy_gbs),
    ]


def tflops_rows(n: int, h: int, v: int, dtype: torch.dtype, device: str, backend: str,
                repeats: int) -> list[tuple]:
    """Rows (name, achieved TFLOP/s, baseline TFLOP/s) for fused_linear_logprobs vs torch.mm."""
    chunk_tokens, chunk_vocab = K._default_chunks(n, v, torch.device(device))
    a = torch.randn(chunk_tokens, h, device=device, dtype=dtype)
    b = torch.randn(h, chunk_vocab, device=device, dtype=dtype)
    t_mm = _median_time(lambda: torch.mm(a, b), device, repeats)
    mm_tflops = 2 * chunk_tokens * h * chunk_vocab / t_mm / 1e12
    del a, b
    hidden = torch.randn(n, h, device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, device=device, dtype=dtype) / h**0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), device=device)

    def fwd_bwd():
        hidden.grad = weight.grad = None
        K.fused_linear_logprobs(hidden, weight, targets, backend=backend).sum().backward()

    t_fb = _median_time(fwd_bwd, device, repeats)
    t_fwd = _median_time(lambda: K.fused_linear_logprobs(hidden.detach(), weight.detach(), targets,
                                                         backend=backend), device, repeats)
    return [
        ("fused fwd (2·N·H·V)", 2 * n * h * v / t_fwd / 1e12, mm_tflops),
        ("fused fwd+bwd (8·N·H·V)", 8 * n * h * v / t_fb / 1e12, mm_tflops),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--n", type=int, default=None, help="tokens (default 16384 on CUDA, 512 on CPU)")
    p.add_argument("--h", type=int, default=None, help="hidden size (default 4096 / 256)")
    p.add_argument("--v", type=int, default=None, help="vocabulary (default 128256 / 8191)")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --device cpu for a smoke test", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    n = args.n or (16384 if cuda else 512)
    h = args.h or (4096 if cuda else 256)
    v = args.v or (128256 if cuda else 8191)
    backend = "triton" if cuda else "torch"
    dtype = _DTYPES[args.dtype]
    name = torch.cuda.get_device_name() if cuda else "cpu"
    rows = bandwidth_rows(n, v, dtype, args.device, backend, args.repeats)
    rows += tflops_rows(n, h, v, dtype, args.device, backend, args.repeats)
    print(f"\ndevice={name} backend={backend} dtype={args.dtype} N={n} H={h} V={v} torch={torch.__version__}")
    print("| measurement | achieved | baseline | fraction |")
    print("|---|---:|---:|---:|")
    for label, got, base in rows:
        unit = "TFLOP/s" if "fused" in label else "GB/s"
        base_name = "torch.mm" if "fused" in label else "copy_"
        print(f"| {label} | {got:.2f} {unit} | {base:.2f} {unit} ({base_name}) | {got / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
