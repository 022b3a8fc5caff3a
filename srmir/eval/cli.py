"""``srmir eval``: evaluate one or more policies and write results.json, report.md and plots."""
from __future__ import annotations

import math

from ..config import Config, load_config
from .inputs import parse_policy_specs
from .runner import run_eval


def eval_kwargs(cfg: Config) -> dict:
    """The keyword arguments of :func:`run_eval` a config gives (everything but policies, out, rm_dir).
    The pipeline uses this too, so ``srmir eval`` and the demo evaluate alike."""
    e, d = cfg.eval, cfg.data
    return dict(harmful=e.harmful_file, benign=e.benign_file, jailbreaks=e.jailbreak_file, judges=e.judges,
                max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, limit=e.limit,
                jailbreak_prompts=e.jailbreak_prompts, seed=e.seed, temperature=e.temperature,
                use_chat_template=cfg.rollout.use_chat_template, dtype=cfg.model.dtype,
                max_prompt_length=d.max_prompt_length,
                harmful_columns=e.harmful_columns, harmful_category=e.harmful_category,
                benign_columns=e.benign_columns, heldout_from=d.train_file,
                split=(d.val_fraction, d.test_fraction, d.seed), taxonomy=d.taxonomy,
                judge_api_base=e.judge_api_base, judge_model=e.judge_model, judge_api_key_env=e.judge_api_key_env,
                judge_format=e.judge_format, verdict_judge=e.verdict_judge, harmful_format=e.harmful_format,
                benign_format=e.benign_format, harmful_mapping=e.harmful_mapping,
                rm_batch_size=cfg.rewards.batch_size_score,
                trust_remote_code=cfg.model.trust_remote_code)


def register(subparsers) -> None:
    from ..cli import add_config_args

    p = subparsers.add_parser(
        "eval", help="evaluate policies: harmful refusal, jailbreaks, over-refusal, helpfulness, benchmarks",
        description="Generate answers of each policy to harmful, jailbreak-wrapped and benign prompts, judge "
                    "them and write DIR/results.json, DIR/report.md and PNG plots (95% intervals). "
                    "Answers are cached in DIR/generations/, so a rerun resumes. Sets, judges and "
                    "generation come from the config's eval section (defaults: the shipped sets).")
    p.add_argument("--policy", action="append", required=True, metavar="[NAME=]PATH",
                   help="policy to evaluate (repeatable): an HF folder or id, embedded:smollm2, or a training "
                        "run folder (its policy/ is used); NAME= sets the name shown in the report")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--rm", metavar="DIR", default=None,
                   help="shadow reward bank for the rewards judge (default: rewards.dir; without one that judge is skipped)")
    p.add_argument("--no-plots", action="store_true", help="write results.json and report.md only")
    add_config_args(p, required=False)
    p.set_defaults(func=_run)


def _run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    policies = parse_policy_specs(args.policy)
    results = run_eval(policies, args.out, rm_dir=args.rm or cfg.rewards.dir, plots=not args.no_plots,
                       **eval_kwargs(cfg))
    for name, res in results["policies"].items():
        parts = []
        for label, est in (("refusal", res["harmful"].get("refusal", {}).get("overall")),
                           ("ASR", res["jailbreaks"]["overall"]["asr"]),
                           ("over-refusal", res["benign"].get("over_refusal", {}).get("sensitive"))):
            if est and est["n"] and not math.isnan(est["value"]):
                parts.append(f"{label} {est['value']:.2f} [{est['lo']:.2f}, {est['hi']:.2f}]")
        print(f"{name}: " + ", ".join(parts))
    print(f"wrote {args.out}/results.json and {args.out}/report.md")
    return 0
