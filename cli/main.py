"""`lcm-lora` command line: inspect, convert, merge, fuse, train, demo.

Every user error is an :class:`~lcm_lora.lcm_core.errors.LcmLoraError`; it is printed as one line
``error: <file>: <problem>`` and the exit status is 2 (``--debug`` shows the traceback).
Sub-commands import their heavy modules lazily so ``lcm-lora --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from ..lcm_core.errors import LcmLoraError
from . import adapter_commands

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcm-lora",
        description="LCM-LoRA tools: inspect, convert, merge and fuse LoRA adapters; train LCM-LoRAs; run the demo.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    adapter_commands.add_parsers(subparsers)
    _add_optional_parsers(subparsers)
    return parser


def _add_optional_parsers(subparsers) -> None:
    """`train` and `demo` live in their own packages; they register their own arguments."""
    from ..demo.cli import add_demo_parser
    from ..training.cli import add_train_parser

    add_train_parser(subparsers)
    add_demo_parser(subparsers)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except LcmLoraError as error:
        if debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
