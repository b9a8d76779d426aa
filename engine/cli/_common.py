"""Helpers shared by the command modules: logging set-up and running a coroutine."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def setup_logging(verbose: bool) -> None:
    """INFO to stderr with ``-v``, WARNING otherwise."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def run_coro(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on uvloop when available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


_SCHEMES = ("tcp://", "ipc://", "inproc://", "ws://", "wss://")


def check_endpoint(option: str, value: str) -> None:
    """A ZeroMQ endpoint as ``--bind``/``--connect`` take it, else CommandError (exit 2)."""
    from engine.cli._errors import CommandError

    expected = "expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    if not value.startswith(_SCHEMES) or value.endswith("://"):
        raise CommandError(f"{option} {value!r}: {expected}", 2)
    if value.startswith("tcp://"):
        host, sep, port = value[len("tcp://") :].rpartition(":")
        if not sep or not host or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
            raise CommandError(f"{option} {value!r}: {expected} (PORT 0-65535 or *)", 2)


_AGENT_SPEC = re.compile(r"([^=:,\s]+=)?[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def check_endpoints(args: Any) -> None:
    """The shape of the options several commands share, before the command runs: every
    ``--bind``/``--connect`` endpoint, the ``--store`` URL and the ``--agents`` list
    (CommandError, exit 2). Whether a store opens or an agent class imports is the
    command's to say."""
    from engine.cli._errors import CommandError

    for dest in ("bind", "connect"):
        value = getattr(args, dest, None)
        for item in [value] if isinstance(value, str) else value or ():
            check_endpoint(f"--{dest}", item)
    store = getattr(args, "store", None)
    if isinstance(store, str):
        from engine.errors import StoreURLError
        from engine.store._url import parse_url

        try:
            parse_url(store)  # the store's own parser: one definition of a valid URL
        except StoreURLError as exc:
            raise CommandError(f"--store: {exc}", 2) from exc
    agents = getattr(args, "agents", None)
    if isinstance(agents, str):
        for spec in filter(None, (item.strip() for item in agents.split(","))):
            if not _AGENT_SPEC.fullmatch(spec):
                raise CommandError(
                    f"--agents {spec!r}: expected package.module:Class "
                    "(or type=package.module:Class), comma-separated",
                    2,
                )
