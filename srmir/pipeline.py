"""``srmir pipeline``: the whole SRMIR method end to end, one stage after another.

    data ─▶ shadow reward models (one per category) ─▶ GRPO ─▶ evaluation (base vs trained)

Every stage reads the same config, so all of them see the same stratified split: the reward
models train on its train/val parts, GRPO samples prompts from its train part, and evaluation
uses its test part. Each stage writes into ``OUT/<stage>`` and is skipped when its output is
already complete, so an interrupted pipeline continues where it stopped (GRPO itself resumes
from its last checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from .config import Config, load_config
from .io import write_json_atomic, write_text_atomic


def register(subparsers) -> None:
    from .cli import add_config_args

    p = subparsers.add_parser(
        "pipeline", help="run data → shadow RMs → GRPO → eval end to end",
        description="Run the SRMIR pipeline: validate the CoD data, train one shadow reward model per "
                    "category, align the policy with GRPO, and evaluate the base against the trained "
                    "policy. Outputs go to OUT/{rm,grpo,eval}; finished stages are skipped on a rerun.")
    add_config_args(p)
    p.add_argument("--out", required=True, metavar="OUT", help="output folder")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, Path(args.out))
    return 0


def _stage(name: str, times: dict):
    """Print a banner and record the stage's wall time."""
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()

    class _Timer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            times[name] = round(time.perf_counter() - t0, 1)
            print(f"=== {name}: {times[name]:.0f} s ===", flush=True)

    return _Timer()


def run_pipeline(cfg: Config, out: Path) -> dict:
    """Run every stage; returns a summary (also written to OUT/summary.json and OUT/summary.md)."""
    from .data import load_records, shipped, stratified_split
    from .taxonomy import load_taxonomy

    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    taxonomy = load_taxonomy(cfg.data.taxonomy)

    with _stage("data", times):
        data_file = cfg.data.train_file or str(shipped("cod"))
        records = load_records(data_file, taxonomy)
        splits = stratified_split(records, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.seed)
        counts = {c: sum(r["category"] == c for r in records) for c in taxonomy.slugs}
        print(f"{data_file}: {len(records)} pairs over {len(taxonomy)} categories {counts}")
        print("split train/val/test: " + "/".join(str(len(s)) for s in splits))

    rm_dir = Path(cfg.rewards.dir) if cfg.rewards.dir else out / "rm"
    with _stage("shadow reward models", times):
        if (rm_dir / "eval.json").is_file() or (cfg.rewards.dir and rm_dir.is_dir()):
            print(f"using the trained bank in {rm_dir}")
        else:
            from .rewards.cli import train_from_config

            train_from_config(cfg, rm_dir)
    rm_eval = json.loads((rm_dir / "eval.json").read_text()) if (rm_dir / "eval.json").is_file() else None

    grpo_dir = out / "grpo"
    policy_dir = grpo_dir / "policy"
    with _stage("GRPO", times):
        if (policy_dir / "config.json").is_file():
            print(f"using the trained policy in {policy_dir}")
        else:
            from .trainer import train

            grpo_cfg = dataclasses.replace(
                cfg,
                rewards=dataclasses.replace(cfg.rewards, dir=str(rm_dir)),
                train=dataclasses.replace(cfg.train, output_dir=str(grpo_dir), resume="auto"),
            )
            from .errors import UserError
            from .trainer.recipe import Stopped

            try:
                policy_dir = Path(train(grpo_cfg))
            except Stopped as e:  # SIGTERM: the checkpoint is written; a rerun continues from it
                raise UserError(f"{e}; rerun the same pipeline command to continue") from None

    with _stage("evaluation", times):
        from .eval.cli import eval_kwargs
        from .eval.runner import run_eval

        results = run_eval({"base": cfg.model.policy, "srmir": str(policy_dir)}, out / "eval",
                           rm_dir=str(rm_dir), **eval_kwargs(cfg))

    summary = {"times_s": times, "rm_dir": str(rm_dir), "policy_dir": str(policy_dir),
               "rm_eval": rm_eval, "eval": str(out / "eval" / "report.md")}
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", _summary_md(summary, results, grpo_dir))
    print(f"\npipeline done in {sum(times.values()):.0f} s: {out / 'summary.md'}")
    return summary


def _summary_md(summary: dict, results: dict, grpo_dir: Path) -> str:
    lines = ["# srmir pipeline summary", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in summary["times_s"].items()]
    acc = (summary.get("rm_eval") or {}).get("pairwise_accuracy")
    if acc:
        lines += ["", "Shadow RM held-out pairwise accuracy on its own category:", ""]
        lines += [f"- {c}: {row.get(c, float('nan')):.2f}" for c, row in acc.items()]
    metrics = grpo_dir / "metrics.jsonl"
    if metrics.is_file():
        from .trainer.metrics import format_trend, read_metrics, reward_trend

        rows = [r for r in read_metrics(metrics) if "step" in r]
        trend = reward_trend(rows)
        if trend:
            lines += ["", f"GRPO reward, {len(rows)} steps (curves in {grpo_dir / 'rewards.png'}):", ""]
            lines += format_trend(trend)
    lines += ["", f"Evaluation report: {summary['eval']}", ""]
    for name, res in results.get("policies", {}).items():
        ref = res.get("harmful", {}).get("refusal", {}).get("overall")
        if ref:
            lines.append(f"- {name}: harmful-prompt refusal {ref['value']:.2f} [{ref['lo']:.2f}, {ref['hi']:.2f}]")
    return "\n".join(lines) + "\n"
