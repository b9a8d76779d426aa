"""The ``engine`` command.

One module per subcommand in this package, each exposing ``register(subparsers)``: it adds
its parser (``subparsers.add_parser(NAME, ...)``) and sets ``func`` on it, which receives the
parsed arguments and returns an exit code. The table below names every command with its
one-line help, so ``engine --help`` lists them all without importing any command module;
running a command imports only that command's module.

Exit codes: 0 success, 1 a runtime failure, 2 bad input (argparse's own errors, and
:class:`CommandError` raised with ``code=2``). A failure prints one line,
``engine CMD: error: ...``; the traceback appears only with ``-v`` or ``ENGINE_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from engine.errors import MissingExtraError

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

# name -> (module, one-line help). Keep the help here in step with the module's own.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("engine.cli.demo", "run the main job (the demo workload)"),
    "broker": ("engine.cli.broker", "run the mesh broker (ZeroMQ ROUTER)"),
    "node": ("engine.cli.node", "run a mesh node hosting agent classes"),
    "keys": ("engine.cli.keys", "CURVE key management"),
    "dlq": ("engine.cli.dlq", "list or replay the broker's dead letters"),
    "top": ("engine.cli.top", "live view of nodes, agent types, queues, throughput, latency"),
    "audit": ("engine.cli.audit", "audit log tools"),
    "bench": ("engine.cli.bench", "run benchmarks or gate against a git ref"),
    "profile": ("engine.cli.profile", "profile a scenario from profiles/scenarios"),
}


class CommandError(Exception):
    """A command failed in a way its user can act on: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    from engine import __version__
    from engine._native import native_info

    info = native_info()
    built = sorted(k for k, v in info.items() if v is not None and not v.startswith("unavailable"))
    missing = sorted(k for k in info if k not in built)
    native = f"native: {', '.join(built) or 'none'}"
    if missing:
        native += f"; pure Python: {', '.join(missing)}"
    return f"engine {__version__} (Python {sys.version.split()[0]}; {native})"


class _VersionAction(argparse.Action):
    """``--version`` computed only when asked (it imports the native modules)."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: str = argparse.SUPPRESS,
        help: str | None = None,
    ) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(_version())
        parser.exit()


def _command_in(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``only`` one command's real parser and the rest as names."""
    parser = argparse.ArgumentParser(
        prog="engine",
        description="agent-engine: a high-performance multi-agent runtime",
        epilog="`engine COMMAND --help` describes one command.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show version and native build")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    try:
        parser = build_parser(only=command or "")
    except MissingExtraError as exc:  # a command module needs an extra that is not installed
        print(f"engine {command}: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        _fail(args, str(exc), exc)
        return exc.code
    except MissingExtraError as exc:  # its message says what to install
        _fail(args, str(exc), exc)
        return 1
    except Exception as exc:  # one line for the user, the traceback on request
        _fail(args, f"{type(exc).__name__}: {exc}", exc)
        return 1
    return code


def _fail(args: argparse.Namespace, message: str, exc: BaseException) -> None:
    if getattr(args, "verbose", False) or os.environ.get("ENGINE_DEBUG") == "1":
        traceback.print_exception(exc, file=sys.stderr)
    print(f"engine {args.command}: error: {message}", file=sys.stderr)
