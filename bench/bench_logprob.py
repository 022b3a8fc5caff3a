"""Benchmark: per-token log-probs from hidden states, forward + backward.

Variants, all computing ``logp[n] = log_softmax(hidden @ Wᵀ)[n, t_n]`` and backpropagating
an upstream gradient into ``hidden`` and ``W``:

- ``naive``: materialize ``logits = hidden @ Wᵀ`` (input dtype), ``log_softmax`` in fp32,
  gather.
- ``trl``:   materialize the logits as ``[B, T, V]`` and apply TRL's
  ``selective_log_softmax`` (trl/trainer/utils.py): for bf16/fp16 a Python loop over the
  B rows doing ``log_softmax`` + gather per row (in the input dtype, as TRL does); for
  fp32 a gather plus a row loop of ``logsumexp``.
- ``ours``:  ``srmir_kernels.fused_linear_logprobs`` (auto backend: Triton on CUDA,
  chunked torch on CPU), which never materializes the ``[N, V]`` logits.

Measurement (each variant in a fresh subprocess, so no allocator state leaks between them):

- CPU peak memory: after the inputs are allocated, the kernel's resident-set high-water
  mark is reset to the current RSS (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0);
  after one forward+backward, ``ru_maxrss`` (which honours that reset) minus the RSS at
  the reset is the peak extra memory. Without the reset, transient peaks from start-up
  would hide smaller peaks, so the script says which method ran ("hwm-reset" or
  "ru_maxrss", the latter only an upper bound on what it hides). The number includes the
  gradients of ``hidden`` and ``W`` (the same for all variants) and one-time runtime
  buffers (oneDNN scratch, thread pools: small). torch's CPU allocator returns large
  blocks to the OS on free, so resident memory tracks live tensors.
- CUDA peak memory: ``torch.cuda.max_memory_allocated()`` during one forward+backward
  minus the memory allocated before it.
- Time: median wall time of the forward+backward calls after the measured (warm-up)
  call: ``--repeats`` per child, pooled over ``--rounds`` children per variant that run
  interleaved (naive, trl, ours, naive, ...); CUDA calls are synchronized. On CPU the median *process CPU time*
  (all threads, ``time.process_time``) is reported too: on a shared machine it is far
  less sensitive to other people's jobs than wall time. The load average before and
  after the run is printed with the table.

Usage::

    python bench/bench_logprob.py --dtype bf16 --repeats 3 --rounds 2
    python bench/bench_logprob.py --shapes 4096x576x49152,16384x4096x128256   # GPU shape too

Defaults: shape 4096x576x49152 on CPU; on CUDA also 16384x4096x128256.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_VARIANTS = ("naive", "trl", "ours")


def trl_selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's ``selective_log_softmax`` (row loop for low precision), re-typed from its source."""
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return selected - lse
    rows = []
    for row_logits, row_labels in zip(logits, index):
        row_logps = torch.log_softmax(row_logits, dim=-1)
        rows.append(row_logps.gather(dim=-1, index=row_labels.unsqueeze(-1)).squeeze(-1))
    return torch.stack(rows)


def _make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str):
    """Inputs drawn directly in ``dtype`` on ``device`` (no fp32 staging copies)."""
    g = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, h, generator=g, dtype=dtype, device=device).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=dtype, device=device).mul_(h**-0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g, device=device)
    upstream = torch.randn(n, generator=g, device=device)
    return hidden, weight, targets, upstream


def _reset_rss_peak() -> tuple[int, str]:
    """Reset the RSS high-water mark to the current RSS; returns (current bytes, method)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss_kib * 1024, "hwm-reset"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"  # Linux: KiB


def _step(variant: str, hidden, weight, targets, upstream, rows: int) -> torch.Tensor:
    """One forward + backward; returns the detached log-probs ``[N]``."""
    if variant == "naive":
        logits = hidden @ weight.t()
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    elif variant == "trl":
        logits = (hidden @ weight.t()).view(rows, -1, weight.shape[0])  # [B, T, V]
        logp = trl_selective_log_softmax(logits, targets.view(rows, -1)).reshape(-1).float()
    else:
        from srmir_kernels import fused_linear_logprobs

        logp = fused_linear_logprobs(hidden, weight, targets)
    (logp * upstream).sum().backward()
    return logp.detach()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_child(variant: str, shape: tuple[int, int, int], dtype: str, repeats: int, device: str, rows: int) -> dict:
    """Measure one variant in this (fresh) process; returns a JSON-able dict."""
    n, h, v = shape
    hidden, weight, targets, upstream = _make_inputs(n, h, v, _DTYPES[dtype], device)
    _sync(device)
    if variant == "ours":
        import srmir_kernels  # noqa: F401  (imports are not part of the measurement)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base, method = torch.cuda.memory_allocated(), "cuda-max-allocated"
    else:
        base, method = _reset_rss_peak()
    logp = _step(variant, hidden, weight, targets, upstream, rows)
    _sync(device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times, cpu_times = [], []
    for _ in range(repeats):
        hidden.grad = weight.grad = None
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        _step(variant, hidden, weight, targets, upstream, rows)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "variant": variant, "shape": list(shape), "dtype": dtype, "device": device,
        "peak_bytes": int(peak), "memory_method": method, "median_s": statistics.median(times), "times_s": times,
        "median_cpu_s": statistics.median(cpu_times), "cpu_times_s": cpu_times,
        "logp_head": logp[:256].float().cpu().tolist(),
        "grad_w_norm": float(weight.grad.float().norm()),
    }


def _spawn(variant, shape, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant,
           "--shapes", "x".join(map(str, shape)), "--dtype", args.dtype,
           "--repeats", str(args.repeats), "--device", args.device, "--rows", str(args.rows)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} {shape} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_rounds(shape, args) -> list[dict]:
    """``--rounds`` passes over the variants, interleaved (naive, trl, ours, naive, ...), so a
    change in machine load hits every variant alike; times pool all rounds' repeats."""
    variants = args.variants.split(",")
    runs = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            runs[v].append(_spawn(v, shape, args))
    merged = []
    for v, rs in runs.items():
        r = dict(rs[0])
        r["times_s"] = [t for x in rs for t in x["times_s"]]
        r["cpu_times_s"] = [t for x in rs for t in x["cpu_times_s"]]
        r["median_s"] = statistics.median(r["times_s"])
        r["median_cpu_s"] = statistics.median(r["cpu_times_s"])
        r["peak_bytes"] = max(x["peak_bytes"] for x in rs)
        merged.append(r)
    return merged


def _table(results: list[dict]) -> str:
    lines = ["| shape N×H×V | variant | peak extra MiB | median s | median CPU s | mem / naive | time / naive "
             "| CPU time / naive | max abs Δlogp vs naive |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_shape: dict[tuple, dict] = {}
    for r in results:
        by_shape.setdefault(tuple(r["shape"]), {})[r["variant"]] = r
    for shape, group in by_shape.items():
        ref = group.get("naive")
        for name, r in group.items():
            mem_ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if ref else "-"
            t_ratio = f"{r['median_s'] / ref['median_s']:.3f}" if ref else "-"
            c_ratio = f"{r['median_cpu_s'] / ref['median_cpu_s']:.3f}" if ref else "-"
            dlogp = (f"{max(abs(a - b) for a, b in zip(r['logp_head'], ref['logp_head'])):.2e}" if ref else "-")
            lines.append(f"| {'×'.join(map(str, shape))} | {name} | {r['peak_bytes'] / 2**20:.1f} | "
                         f"{r['median_s']:.3f} | {r['median_cpu_s']:.3f} | {mem_ratio} | {t_ratio} | "
                         f"{c_ratio} | {dlogp} |")
    return "\n".join(lines)


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        n, h, v = (int(x) for x in item.lower().split("x"))
        shapes.append((n, h, v))
    return shapes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per child process")
    p.add_argument("--rounds", type=int, default=2, help="interleaved child processes per variant")
    p.add_argument("--shapes", default=None, help="comma list of NxHxV")
    p.add_argument("--variants", default=",".join(_VARIANTS))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=8, help="B for the [B, T, V] row loop of the trl variant")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    default = "4096x576x49152" + (",16384x4096x128256" if args.device == "cuda" else "")
    shapes = _parse_shapes(args.shapes or default)
    if args.child:
        print(json.dumps(run_child(args.child, shapes[0], args.dtype, args.repeats, args.device, args.rows)))
        return 0
    load_before = os.getloadavg()
    results = [_run_rounds(shape, args) for shape in shapes]
    results = [r for group in results for r in group]
    load_after = os.getloadavg()
    methods = sorted({r["memory_method"] for r in results})
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} repeats={args.repeats} rounds={args.rounds} "
          f"memory={','.join(methods)} "
          f"loadavg(1m) before={load_before[0]:.2f} after={load_after[0]:.2f} cpus={os.cpu_count()}")
    print(_table(results))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
