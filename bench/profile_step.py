"""Profile one srmir GRPO step on the issue-8 workload (torch.profiler, CPU or CUDA).

Sets up the same recipe as ``bench_grpo_vs_trl.py``'s srmir side, runs a warm-up step, then one
step under ``torch.profiler`` and prints the phase times and the operators that dominate each
phase (self time), so that the next optimisation is chosen from a measurement.

    python bench/profile_step.py                       # SmolLM2, K=7
    python bench/profile_step.py --k 1 --top 25
    python bench/profile_step.py --trace /tmp/step.json   # chrome://tracing / perfetto
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=0)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--top", type=int, default=15, help="operators listed")
    p.add_argument("--trace", help="also write a chrome trace here")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides (section.field=value)")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from bench_grpo_vs_trl import random_policy_dir, srmir_recipe
    from srmir.models import MINILM, SMOLLM2, resolve_model

    args.workdir = str(Path.cwd() / "runs" / "profile_step")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    args.policy = resolve_model(SMOLLM2)
    if args.tiny:
        args.policy = random_policy_dir(args.policy, Path(args.workdir) / "policy_tiny", "tiny")
    args.rm_backbone, args.steps = resolve_model(MINILM), 2
    recipe = srmir_recipe(args, tuple(args.set))

    # Every phase of the step shows up as a labelled range in the profile.
    import srmir.trainer.recipe as recipe_mod

    orig_timer = recipe_mod._PhaseTimer.__call__

    def labelled(self, name):
        class Both:
            def __enter__(s):
                s.rf = record_function(f"phase/{name}")
                s.rf.__enter__()
                s.t = orig_timer(self, name)
                s.t.__enter__()

            def __exit__(s, *exc):
                s.t.__exit__(*exc)
                s.rf.__exit__(*exc)

        return Both()

    recipe_mod._PhaseTimer.__call__ = labelled
    recipe.step(0)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, record_shapes=False) as prof:
        m = recipe.step(1)
    print("phases (s): " + "  ".join(f"{k[5:]}={v:.2f}" for k, v in m.items() if k.startswith("time/")))
    print(f"peak memory {m['mem/peak_gb']:.2f} GB, {m['tokens_per_s']:.1f} completion tokens/s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
