"""Benchmark: K shadow reward models scored in one batched pass vs the sequential loop.

    python bench/bench_rewards.py [--k 7 1] [--pairs 32] [--batch-size 8] [--repeats 5] [--tuned-layers all 2]
                                  [--device cpu|cuda] [--dtype fp32|bf16] [--rm DIR]

Models: K all-MiniLM-L6-v2 reward models (``embedded:minilm``). Without ``--rm`` they are made
the way training leaves them: the embeddings and the blocks below the top ``tuned_layers`` are
the backbone's own (bit-identical in all K), the tuned blocks and the heads differ per model
(random perturbation — the timing does not depend on the values). ``all`` tunes every block, so
nothing but the embeddings is shared: that row measures the K-batched (vmap) matmuls alone.
With ``--rm DIR`` a trained bank is timed instead.

Data: the first ``--pairs`` prompts of the shipped CoD demo set, round-robin over categories,
with chosen and rejected responses alternating.

Sequential = :func:`srmir.rewards.score_sequential`: K standalone HF reward models, each
tokenizing and scoring all pairs in turn (what TRL does with a list of reward models).
Batched = :meth:`ShadowRewardBank.score`: one tokenization, one vmapped pass. Both batch pairs
of similar length (``--batch-size``) and run under ``torch.no_grad``. One warm-up run each, then
the median of ``--repeats`` rounds (the two alternate). The two score matrices are compared (max |Δ|).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import torch


def make_bank(k: int, tuned_layers, device, dtype):
    from srmir.rewards import ShadowRewardBank
    from srmir.rewards.model import RewardModel, freeze_lower, load_backbone

    base, tokenizer = load_backbone("embedded:minilm")
    models = []
    for i in range(k):
        torch.manual_seed(i)
        model = RewardModel(copy.deepcopy(base), "auto")
        frozen = freeze_lower(model, tuned_layers)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(1e-3 * torch.randn_like(p))
        models.append(model.eval())
    bank = ShadowRewardBank.from_models(models, tokenizer, [f"rm{i}" for i in range(k)], backbone="embedded:minilm",
                                        max_length=256, frozen_layers=frozen)
    return bank.to(device, dtype)


def pairs(n: int) -> tuple[list[str], list[str]]:
    from srmir.data import load_records, shipped

    records = load_records(shipped("cod"))
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        by_cat.setdefault(r["category"], []).append(r)
    cats = list(by_cat)
    picked = [by_cat[cats[i % len(cats)]][i // len(cats)] for i in range(n)]
    return [r["prompt"] for r in picked], [r["chosen"] if i % 2 == 0 else r["rejected"] for i, r in enumerate(picked)]


def median_times(fns, repeats: int, device) -> list[tuple[float, float]]:
    """Per function: (median wall seconds, median process CPU seconds) over ``repeats`` rounds.

    One warm-up call each, then the functions alternate within every round, so a change in the
    shared machine's load hits both alike; CPU time is reported too since load inflates wall time.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in fns:  # warm-up (lazy init, allocator, kernel selection)
        fn()
    sync()
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def run(k: int, tuned, bank_dir, prompts, responses, args, device, dtype) -> dict:
    from srmir.rewards import ShadowRewardBank, score_sequential

    if bank_dir:
        bank = ShadowRewardBank.from_pretrained(bank_dir, device=device, dtype=dtype)
    else:
        bank = make_bank(k, tuned, device, dtype)
    models = [m.to(device=device, dtype=dtype) for m in bank.models()]
    batched = lambda: bank.score(prompts, responses, normalize=False, batch_size=args.batch_size)  # noqa: E731
    sequential = lambda: score_sequential(models, bank.encoder, prompts, responses, args.batch_size)  # noqa: E731
    diff = (batched() - sequential()).abs().max().item()
    (t_batched, c_batched), (t_sequential, c_sequential) = median_times([batched, sequential], args.repeats, device)
    return {"k": len(bank.categories), "frozen_layers": bank.frozen_layers,
            "batched_s": t_batched, "sequential_s": t_sequential, "ratio": t_sequential / t_batched,
            "batched_cpu": c_batched, "sequential_cpu": c_sequential, "cpu_ratio": c_sequential / c_batched, "max_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[7, 1])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass (8 was fastest on the 2-core CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tuned-layers", nargs="+", default=["all", "2"], help="'all' or an int, per row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument("--rm", default=None, help="time this trained bank instead of synthetic models")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    prompts, responses = pairs(args.pairs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    print(f"# device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; {args.dtype}; "
          f"{args.pairs} pairs, batch {args.batch_size}; median of {args.repeats}; load avg {os.getloadavg()[0]:.2f}")
    print("| K | tuned blocks | shared frozen blocks | batched s (CPU s) | sequential s (CPU s) "
          "| speed-up wall (CPU) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    rows = [("trained", args.rm)] if args.rm else [(None if t == "all" else int(t), None) for t in args.tuned_layers]
    for k in ([0] if args.rm else args.k):
        for tuned, bank_dir in rows:
            r = run(k, tuned, bank_dir, prompts, responses, args, device, dtype)
            print(f"| {r['k']} | {'all' if tuned is None else tuned} | {r['frozen_layers']} "
                  f"| {r['batched_s']:.2f} ({r['batched_cpu']:.2f}) | {r['sequential_s']:.2f} ({r['sequential_cpu']:.2f}) "
                  f"| {r['ratio']:.2f}× ({r['cpu_ratio']:.2f}×) | {r['max_diff']:.1e} |", flush=True)
    print(f"# load avg at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
