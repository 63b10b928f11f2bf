"""`lcm-lora` command line: inspect, convert, merge, fuse, train, demo.

Every user error is an :class:`~lcm_lora.lcm_core.errors.LcmLoraError`; it is printed as one line
``error: <file>: <problem>`` and the exit status is 2 (``--debug``, before or after the
sub-command, shows the traceback and library warnings). Sub-commands import their heavy modules
lazily so ``lcm-lora --help`` stays fast. Output cut short by the reader (``lcm-lora inspect X |
head -1``) ends quietly with status 141 (128 + SIGPIPE), as other command-line tools do.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from ..lcm_core.cpu_threads import configure_before_torch
from ..lcm_core.errors import LcmLoraError
from ..lcm_core.quiet_libraries import quiet_libraries
from . import adapter_commands

EXIT_USER_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat`, `grep`, ... report when the reader goes away

DEBUG_HELP = "show full tracebacks and library warnings"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcm-lora",
        description="LCM-LoRA tools: inspect, convert, merge and fuse LoRA adapters; train LCM-LoRAs; run the demo.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    adapter_commands.add_parsers(subparsers)
    _add_optional_parsers(subparsers)
    for sub in subparsers.choices.values():  # `lcm-lora inspect X --debug` works too
        if "--debug" not in sub._option_string_actions:
            sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _add_optional_parsers(subparsers) -> None:
    """`train` and `demo` live in their own packages; they register their own arguments."""
    from ..demo.cli import add_demo_parser
    from ..training.cli import add_train_parser

    add_train_parser(subparsers)
    add_demo_parser(subparsers)


def _quiet_stdout_after_broken_pipe() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    configure_before_torch()
    quiet_libraries(debug)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _one_line_warning
        return _main(argv, debug)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` on stderr, without the source line (``--debug`` shows Python's format)."""
    try:
        print(f"warning: {message}", file=sys.stderr if file is None else file)
    except OSError:
        pass


def _main(argv: list[str], debug: bool) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # only `train` takes words after its options (key=value overrides)
            from ..training.cli import take_late_overrides

            take_late_overrides(parser, args, extra)
        code = int(args.func(args) or 0)
        if sys.stdout is not None:  # None when started with stdout closed (>&-): print() then writes nothing
            sys.stdout.flush()  # a broken pipe surfaces here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        _quiet_stdout_after_broken_pipe()
        return EXIT_BROKEN_PIPE
    except OSError as error:  # e.g. stdout on a full disk (> /dev/full); the commands turn their own file errors
        if debug:               # into LcmLoraErrors, so what reaches here is the output stream's
            traceback.print_exc()
        _quiet_stdout_after_broken_pipe()  # nothing more to write there, not even at exit
        where = error.filename if error.filename is not None else "standard output"
        print(f"error: {where}: {error.strerror or error}", file=sys.stderr)
        return EXIT_USER_ERROR
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
