"""The GRPO trainer under DeepSpeed: ``train(cfg)`` for code, ``main(argv)`` for launchers.

``python train.py --config CFG``, ``deepspeed --num_gpus N train.py --config CFG --deepspeed
ds_configs/zero3.json`` and ``torchrun ... train.py --config CFG`` all end up in :func:`main`;
the loop itself is :class:`~srmir.trainer.recipe.GRPORecipe`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import Config, load_config


def train(cfg: Config, reward_fn=None, local_rank: Optional[int] = None) -> Path:
    """Run GRPO as configured; return the folder of the final policy (HF format, safetensors).

    ``reward_fn``: any object with ``categories`` (K slugs) and ``score(prompts, responses)``
    returning ``[N, K]``; None loads the ShadowRewardBank from ``cfg.rewards.dir``.
    """
    from .recipe import GRPORecipe

    recipe = GRPORecipe(cfg, reward_fn=reward_fn, local_rank=local_rank)
    recipe.setup()
    return recipe.train()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's command line (shared by train.py and ``srmir train``)."""
    parser.add_argument("--config", required=True, metavar="CFG", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. grpo.beta=0.1")
    parser.add_argument("--deepspeed", metavar="JSON", help="DeepSpeed config (sets train.deepspeed)")
    parser.add_argument("--resume", metavar="auto|DIR", help="resume from the latest checkpoint (auto) or DIR")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher (LOCAL_RANK is read as well)")


def run(args: argparse.Namespace) -> int:
    """Load the config (flags override the YAML), train, report where the policy went."""
    from .recipe import Stopped

    overrides = list(args.overrides or [])
    if args.deepspeed:
        overrides.append(f"train.deepspeed={args.deepspeed}")
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    cfg = load_config(args.config, overrides)
    try:
        policy = train(cfg, local_rank=args.local_rank)
    except Stopped as e:
        print(f"srmir: {e}", file=sys.stderr)
        return 143  # 128 + SIGTERM: schedulers see a preempted job, not a finished one
    from ..runtime import dist

    if dist.is_main():
        print(f"srmir: final policy saved to {policy}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``train.py``: parse, run, and turn a UserError into one line + exit 2."""
    from ..cli import run_main

    parser = argparse.ArgumentParser(prog="train.py", description="GRPO with shadow reward models under DeepSpeed")
    add_arguments(parser)
    return run_main(lambda: run(parser.parse_intermixed_args(argv)))
