"""Middleware chains: ``async def mw(ctx, value, call_next)`` folded around a terminal call.

A leaf module (it imports nothing from the engine): the runtime's handler calls and the
tool registry's tool calls compose their chains with it, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Middleware", "Next", "compose"]

Next = Callable[[Any, Any], Awaitable[Any]]
Middleware = Callable[[Any, Any, Next], Awaitable[Any]]


def compose(middleware: tuple[Middleware, ...], terminal: Next) -> Next:
    """Fold ``middleware`` around ``terminal`` (first added runs outermost)."""
    call = terminal
    for mw in reversed(middleware):
        call = _link(mw, call)
    return call


def _link(mw: Middleware, nxt: Next) -> Next:
    def step(ctx: Any, value: Any) -> Awaitable[Any]:
        return mw(ctx, value, nxt)

    return step
