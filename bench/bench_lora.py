"""LoRA GRPO (issue 14): srmir LoRA vs srmir full fine-tuning, and srmir LoRA vs TRL's GRPOTrainer
with ``peft_config``, side by side in one run.

Workload: the GRPO comparison's (``bench_grpo_vs_trl.py``): SmolLM2-135M-Instruct in bf16,
4 prompts × G = 8 completions, 32 new tokens, β = 0.04, K MiniLM reward models. LoRA on both
sides: rank 16, alpha 32, dropout 0, on q/k/v/o and gate/up/down projections. With LoRA, srmir's
reference is the policy with its adapters off, as TRL's is; full fine-tuning keeps srmir's separate
frozen reference.

Each side is a worker process of ``bench_grpo_vs_trl.py`` (peak RSS is its own ``ru_maxrss``,
setup included), set up one at a time; the parent then asks each for one step in turn, so drift
of the machine hits all alike; the first step of each is a warm-up. ``--repeats`` runs the whole
comparison again in fresh workers and reports every run and the spread.

    python bench/bench_lora.py --steps 5 --vs full      # srmir LoRA vs srmir full fine-tuning
    python bench/bench_lora.py --steps 5 --vs trl       # srmir LoRA vs TRL LoRA
    python bench/bench_lora.py --steps 5 --vs full trl --repeats 3 --json runs/bench_lora.json
    python bench/bench_lora.py --steps 3 --vs full --shape qwen2.5-0.5b   # a real model's shape, random weights
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_grpo_vs_trl import SHAPES, Worker, random_policy_dir, summarize  # noqa: E402

# side → (worker kind, LoRA rank: 0 is full fine-tuning)
SIDES = {"srmir-lora": ("srmir", 16), "srmir-full": ("srmir", 0), "trl-lora": ("trl", 16)}


def run_once(sides: list[str], args, policy: str, rm_backbone: str, workdir: Path) -> dict:
    """One comparison in fresh workers: {side: summary}."""
    common = ["--steps", str(args.steps), "--group-size", "8", "--max-new-tokens", "32", "--policy", policy,
              "--rm-backbone", rm_backbone, "--workdir", str(workdir), "--k", str(args.k), "--lr", str(args.lr)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    workers, results = {}, {side: [] for side in sides}
    try:
        for side in sides:  # set up one at a time: setup is not what we compare
            kind, rank = SIDES[side]
            workers[side] = Worker(side, [sys.executable, str(HERE / "bench_grpo_vs_trl.py"), "--worker", kind,
                                          "--lora-rank", str(rank), *common], env)
        for i in range(args.steps + 1):
            for side in sides:
                r = workers[side].step()
                print(f"  step {i} {side:10s} {r['step_s']:7.2f} s  "
                      + " ".join(f"{k}={v:.2f}" for k, v in r["split"].items()) + f"  rss={r['rss_peak_mb']:.0f} MB",
                      flush=True)
                if i > 0:
                    results[side].append(r)
    finally:
        for w in workers.values():
            w.close()
    return {side: summarize(rs) for side, rs in results.items()}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="measured steps per run (after one warm-up step)")
    p.add_argument("--repeats", type=int, default=1, help="runs of the whole comparison, each in fresh workers")
    p.add_argument("--vs", nargs="+", choices=["full", "trl"], default=["full", "trl"],
                   help="what srmir LoRA is compared with (each comparison is its own run)")
    p.add_argument("--k", type=int, default=7, help="number of reward models")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random-initialised policy of this shape")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", help="write every run's summary here")
    args = p.parse_args()

    from srmir.models import MINILM, SMOLLM2, resolve_model

    workdir = Path(args.workdir or Path.cwd() / "runs" / "bench_lora")
    workdir.mkdir(parents=True, exist_ok=True)
    policy = resolve_model(SMOLLM2)
    if args.shape:
        policy = random_policy_dir(policy, workdir / f"policy_{args.shape}", args.shape)
    rm_backbone = resolve_model(MINILM)
    runs: dict[str, list[dict]] = {vs: [] for vs in args.vs}
    for repeat in range(args.repeats):
        for vs in args.vs:
            sides = ["srmir-lora", "srmir-full" if vs == "full" else "trl-lora"]
            load = os.getloadavg()[0]
            print(f"run {repeat + 1}/{args.repeats}: {' vs '.join(sides)} (load {load:.2f})", flush=True)
            t0 = time.time()
            summary = run_once(sides, args, policy, rm_backbone, workdir)
            summary["load_before"], summary["load_after"], summary["wall_s"] = load, os.getloadavg()[0], time.time() - t0
            runs[vs].append(summary)
            report_run(summary, sides)
    print("\nsummary over runs: median (min–max) of the per-run medians and ratios")
    for vs, summaries in runs.items():
        other = "srmir-full" if vs == "full" else "trl-lora"
        time_ratio = [s["srmir-lora"]["median_s"] / s[other]["median_s"] for s in summaries]
        rss_ratio = [s["srmir-lora"]["rss_peak_mb"] / s[other]["rss_peak_mb"] for s in summaries]
        print(f"srmir-lora vs {other}: step {spread([s['srmir-lora']['median_s'] for s in summaries])} s vs "
              f"{spread([s[other]['median_s'] for s in summaries])} s, time ratio {spread(time_ratio)}; "
              f"peak RSS {spread([s['srmir-lora']['rss_peak_mb'] for s in summaries])} vs "
              f"{spread([s[other]['rss_peak_mb'] for s in summaries])} MB, RSS ratio {spread(rss_ratio)}")
    if args.json:
        meta = {"steps": args.steps, "k": args.k, "shape": args.shape, "lora": {"rank": 16, "alpha": 32},
                "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({"workload": meta, "runs": runs}, indent=2) + "\n")


def report_run(summary: dict, sides: list[str]) -> None:
    for side in sides:
        s = summary[side]
        print(f"  {side:10s} step {s['median_s']:.2f} s ({s['min_s']:.2f}–{s['max_s']:.2f})  "
              + " ".join(f"{k}={v:.2f}" for k, v in s["split"].items())
              + f"  peak RSS {s['rss_peak_mb']:.0f} MB  {s['tokens_per_s']:.1f} tok/s", flush=True)
    a, b = summary[sides[0]], summary[sides[1]]
    print(f"  ratio {sides[0]} / {sides[1]}: step time {a['median_s'] / b['median_s']:.2f}×, "
          f"peak RSS {a['rss_peak_mb'] / b['rss_peak_mb']:.2f}×", flush=True)


if __name__ == "__main__":
    main()
