"""``srmir train``: the same command line as ``python train.py``."""
from __future__ import annotations

from . import add_arguments, run


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="GRPO-train the policy against the shadow reward bank",
                                   description="GRPO with shadow reward models under DeepSpeed "
                                               "(one process here; use deepspeed/torchrun on train.py for more)")
    add_arguments(parser)
    parser.set_defaults(func=run)
