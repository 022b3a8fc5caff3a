"""The ``srmir`` command: one parser, a subcommand per stage.

Each stage's package registers its own subcommand (``srmir.<pkg>.cli.register``); a stage whose
package is not installed simply does not appear in ``srmir --help``. A user's mistake is a
:class:`~srmir.errors.UserError`: one line on stderr, exit status 2, no traceback. So is a failure
of the operating system (no space left, a read-only folder, permission denied, a refused
connection): one line naming the path or host and the OS reason. ``SRMIR_DEBUG=1`` shows the
traceback instead. ``key.sub=value`` overrides may stand anywhere on the line, between options too.
"""
from __future__ import annotations

import argparse
import importlib
import os
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
    """Run ``fn``; turn a UserError or an operating-system failure into one line on stderr and
    exit status 2. A rank of a multi-rank run ends here (``runtime.dist.finish``). (A one-process
    group is torn down at interpreter exit; tearing it down here would break a caller that runs
    srmir again in the same process.)"""
    code = _run(fn)
    if "torch.distributed" in sys.modules:  # nothing distributed was started otherwise
        from .runtime import dist

        dist.finish(code)
    return code


def _run(fn: Callable[[], int]) -> int:
    try:
        return int(fn() or 0)
    except UserError as e:
        if os.environ.get("SRMIR_DEBUG"):
            raise
        print(f"srmir: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except OSError as e:
        if os.environ.get("SRMIR_DEBUG"):
            raise
        if not (getattr(e, "reported_by_rank0", False) and os.environ.get("RANK", "0") != "0"):
            print(f"srmir: error: {os_error_line(e)}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("srmir: interrupted", file=sys.stderr)
        return 130


def os_error_line(e: OSError) -> str:
    """``<path>: <reason>`` (``<path> -> <path2>`` for a rename) or the reason alone without a path."""
    reason = e.strerror or str(e) or type(e).__name__
    where = e.filename if e.filename is not None else None
    if where is not None and e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    return f"{where}: {reason}" if where is not None else f"{type(e).__name__}: {reason}"


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse with ``key.sub=value`` overrides accepted anywhere on the line: argparse stops filling a
    positional list at the first option, so the overrides after it come back unrecognised and are
    added here, in order (a later one still wins)."""
    args, extra = parser.parse_known_args(argv)
    stray = []
    for item in extra:
        if hasattr(args, "overrides") and "=" in item and not item.startswith("-"):
            args.overrides = list(args.overrides or []) + [item]
        else:
            stray.append(item)
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    def go() -> int:
        parser = build_parser()
        args = parse(parser, argv)
        return args.func(args)

    return run_main(go)


if __name__ == "__main__":
    raise SystemExit(main())
