"""The ``engine`` command.

One module per subcommand in this package, each exposing ``register(subparsers)``: it adds
its parser (``subparsers.add_parser(NAME, ...)``) and sets ``func`` on it, which receives the
parsed arguments and returns an exit code. The table below names every command with its
one-line help, so ``engine --help`` lists them all without importing any command module;
running a command imports only that command's module.

Exit codes: 0 success, 1 a runtime failure, 2 bad input (argparse's own errors, and
:class:`CommandError` raised with ``code=2``). A failure prints one line,
``engine CMD: error: ...``; the traceback appears only with ``-v`` or ``ENGINE_DEBUG=1``.

Every parser is an :class:`EngineParser`: help shows each option's default, descriptions
keep their line breaks, a subcommand without a description gets its one-line help, and a
usage error is one line too. A command that imports the user's code (an ``--agents``
option) also gets ``--app-dir DIR`` (default: the current directory), put first on
``sys.path``, as uvicorn and celery do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import typing
from collections.abc import Sequence

from engine.cli._errors import CommandError
from engine.errors import MissingExtraError

__all__ = ["COMMANDS", "CommandError", "EngineParser", "build_parser", "main"]

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
    "run": ("engine.cli.run", "run one orchestrated job and print its answer"),
    "resume": ("engine.cli.resume", "continue a job whose process died"),
    "jobs": ("engine.cli.jobs", "list orchestrated jobs, or show one with its ledger"),
    "store": ("engine.cli.store", "state store schema: migrate or show its version"),
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; an option's default appended to its help when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


_STOCK_FORMATTERS = (
    argparse.HelpFormatter,
    argparse.RawDescriptionHelpFormatter,
    argparse.RawTextHelpFormatter,
    argparse.ArgumentDefaultsHelpFormatter,
)


class _SubParsers(argparse._SubParsersAction):  # type: ignore[type-arg]
    """``add_parser`` that gives a subcommand its one-line help as description if it has none."""

    def add_parser(self, name: str, **kwargs: object) -> argparse.ArgumentParser:
        if kwargs.get("description") is None and kwargs.get("help"):
            kwargs["description"] = kwargs["help"]
        parser: argparse.ArgumentParser = super().add_parser(name, **kwargs)  # type: ignore[arg-type]
        return parser


class EngineParser(argparse.ArgumentParser):
    """The ``engine`` command's parsers: defaults in help, one-line usage errors (exit 2)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        formatter = kwargs.get("formatter_class")
        if formatter is None or formatter in _STOCK_FORMATTERS:
            kwargs["formatter_class"] = _Formatter  # shows defaults, keeps descriptions
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.register("action", "parsers", _SubParsers)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


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
    parser = EngineParser(
        prog="engine",
        description="agent-engine: a high-performance multi-agent runtime",
        epilog="`engine COMMAND --help` describes one command.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show version and native build")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(sub)
            _add_app_dir(sub.choices[name])
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _add_app_dir(parser: argparse.ArgumentParser) -> None:
    """``--app-dir`` for a command that imports the user's code (it has ``--agents``)."""
    if any(a.dest == "agents" for a in parser._actions) and not any(
        a.dest == "app_dir" for a in parser._actions
    ):
        parser.add_argument(
            "--app-dir",
            default=".",
            metavar="DIR",
            help="import the --agents modules from DIR (put first on sys.path)",
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    try:
        parser = build_parser(only=command or "")
    except MissingExtraError as exc:  # a command module needs an extra that is not installed
        print(f"engine {command}: error: {exc}", file=sys.stderr)
        return 1
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the command, not the top-level parser
        msg = f"unrecognized arguments: {' '.join(extra)} (see `engine {args.command} --help`)"
        print(f"engine {args.command}: error: {msg}", file=sys.stderr)
        return 2
    app_dir = getattr(args, "app_dir", None)
    if app_dir is not None:  # `engine node --agents app.agents:Echo` from the folder of app/
        path = os.path.abspath(app_dir)
        if not os.path.isdir(path):
            print(f"engine {args.command}: error: --app-dir {app_dir}: no such directory",
                  file=sys.stderr)  # fmt: skip
            return 2
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        from engine.cli._common import check_endpoints

        check_endpoints(args)  # a malformed --bind/--connect is bad input, whatever the command
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
