"""The runtime layer: the in-process :class:`Runtime`, queries, hooks and transports."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from engine.runtime._hooks import HOOK_NAMES, Hooks, Middleware
from engine.runtime._local import Policy, Runtime, Spawn
from engine.runtime._queries import Query, QueryState, current_query
from engine.runtime._subscriptions import Subscription
from engine.runtime._transport import LoopbackHub, LoopbackTransport, Transport, TransportHost

__all__ = [
    "HOOK_NAMES",
    "Hooks",
    "LoopbackHub",
    "LoopbackTransport",
    "Middleware",
    "Policy",
    "Query",
    "QueryState",
    "Runtime",
    "Spawn",
    "Subscription",
    "Transport",
    "TransportHost",
    "current_query",
    "run",
]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on the default asyncio loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
