"""Hooks (cheap synchronous callbacks) and middleware (an async chain around each call).

Hooks observe: ``pre_handler(ctx, message)``, ``post_handler(ctx, message, result, seconds)``,
``pre_tool(call, arguments)``, ``post_tool(call, result, seconds)``,
``on_error(ctx_or_call, value, exc)``, ``on_spawn(agent)``, ``on_stop(agent)``.
A hook must not block. An exception in a ``pre_*``/``post_*`` hook fails that call like
an exception in the handler would (so a hook can veto); one in ``on_error``, ``on_spawn``
or ``on_stop`` is logged and ignored.

Middleware wraps: ``async def mw(ctx, value, call_next) -> Any`` where ``ctx`` is a
:class:`engine.Context` (``ctx.kind == "handler"``) or a :class:`engine.tools.ToolCall`
(``kind == "tool"``), ``value`` the message or the tool arguments, and
``await call_next(ctx, value)`` runs the rest of the chain. The chain is composed once
when it changes, not per call; with no middleware and no hooks the runtime calls the
handler directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from engine._chain import Middleware, Next, compose

__all__ = ["HOOK_NAMES", "Hooks", "Middleware", "Next", "compose"]

log = logging.getLogger("engine.runtime")

HOOK_NAMES: Final = (
    "pre_handler",
    "post_handler",
    "pre_tool",
    "post_tool",
    "on_error",
    "on_spawn",
    "on_stop",
)


class Hooks:
    """Named lists of hook callables; ``rt.hooks.add("post_handler", fn)``."""

    __slots__ = (
        "_changed",
        "on_error",
        "on_spawn",
        "on_stop",
        "post_handler",
        "post_tool",
        "pre_handler",
        "pre_tool",
    )

    pre_handler: tuple[Callable[..., Any], ...]
    post_handler: tuple[Callable[..., Any], ...]
    pre_tool: tuple[Callable[..., Any], ...]
    post_tool: tuple[Callable[..., Any], ...]
    on_error: tuple[Callable[..., Any], ...]
    on_spawn: tuple[Callable[..., Any], ...]
    on_stop: tuple[Callable[..., Any], ...]

    def __init__(self, changed: Callable[[], None] | None = None) -> None:
        for name in HOOK_NAMES:
            setattr(self, name, ())
        self._changed = changed

    def add(self, name: str, fn: Callable[..., Any]) -> Callable[[], None]:
        """Add ``fn`` to hook ``name``; returns a function that removes it again."""
        if name not in HOOK_NAMES:
            raise ValueError(f"unknown hook {name!r}; hooks are: {', '.join(HOOK_NAMES)}")
        if not callable(fn):
            raise TypeError(f"hook {name!r} must be callable, got {type(fn).__name__}")
        setattr(self, name, (*getattr(self, name), fn))
        if self._changed is not None:
            self._changed()
        return lambda: self.remove(name, fn)

    def remove(self, name: str, fn: Callable[..., Any]) -> None:
        """Remove ``fn`` from hook ``name`` (ValueError if it is not there)."""
        if name not in HOOK_NAMES:
            raise ValueError(f"unknown hook {name!r}; hooks are: {', '.join(HOOK_NAMES)}")
        current: tuple[Callable[..., Any], ...] = getattr(self, name)
        if fn not in current:
            raise ValueError(f"{fn!r} is not registered for hook {name!r}")
        items = list(current)
        items.remove(fn)
        setattr(self, name, tuple(items))
        if self._changed is not None:
            self._changed()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in HOOK_NAMES)

    def call(self, name: str, *args: Any) -> None:
        """Run hook ``name``; a failing hook is logged, the others still run."""
        for fn in getattr(self, name):
            try:
                fn(*args)
            except Exception:
                log.exception("hook %s (%r) raised", name, fn)
