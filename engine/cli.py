"""The ``engine`` command.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module
sets ``func`` on its parser, which receives the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands (each has register(subparsers)).
COMMANDS: tuple[str, ...] = (
    "engine._demo",
    "engine.mesh._cli",
    "engine.observe._cli_audit",
    "engine.observe._cli_bench",
    "engine.observe._cli_profile",
    "engine.observe.top",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="agent-engine command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
