"""The ``srmir`` command: one parser, a subcommand per stage.

Each stage's package registers its own subcommand (``srmir.<pkg>.cli.register``); a stage whose
package is not installed simply does not appear in ``srmir --help``. A user's mistake is a
:class:`~srmir.errors.UserError`: one line on stderr, exit status 2, no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

from .errors import UserError

# Subcommand providers, in the order of the pipeline.
_STAGES = ("srmir.data.cli", "srmir.rewards.cli", "srmir.trainer.cli", "srmir.eval.cli", "srmir.pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srmir",
        description="GRPO safety alignment with shadow reward models (one reward model per harm category).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"srmir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _STAGES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):  # that stage is not there: no subcommand
                continue
            raise
        mod.register(sub)
    return parser


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config CFG`` plus trailing ``key.sub=value`` overrides, shared by config-driven commands."""
    parser.add_argument("--config", required=required, metavar="CFG", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. grpo.beta=0.1")


def run_main(fn: Callable[[], int]) -> int:
    """Run ``fn``; turn a UserError into one line on stderr and exit status 2."""
    try:
        return int(fn() or 0)
    except UserError as e:
        print(f"srmir: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("srmir: interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[Sequence[str]] = None) -> int:
    def go() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)

    return run_main(go)


if __name__ == "__main__":
    raise SystemExit(main())
