"""The `i3ad` command: make-data, train, detect, calibrate.

This module stays light: `i3ad`, `i3ad --help` and `i3ad --version` answer from the command list below without
importing torch (seconds); a named subcommand loads `i3ad.commands`, which holds the parsers and the work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .usage import COMMANDS, DESCRIPTION


def top_parser() -> argparse.ArgumentParser:
    """The top level only: the command list, --help and --version (no subcommand's arguments)."""
    parser = argparse.ArgumentParser(
        prog="i3ad", description=DESCRIPTION, epilog="`i3ad COMMAND --help` lists a command's options."
    )
    parser.add_argument("--version", action="version", version=f"i3ad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; a bare `i3ad` prints the help; user errors print one clear line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        parser = top_parser()
        if not argv:
            parser.print_help()
            return 0
        parser.parse_args(argv)  # --help / --version exit here; an unknown command is a usage error
        parser.print_help()
        return 0
    from .commands import run  # torch and the models: only once a subcommand runs

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
