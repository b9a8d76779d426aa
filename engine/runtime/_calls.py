"""The one handler-call path: query step checks, hooks, middleware, failure mapping.

Every delivery — the idle fast path of ``send``, a mailbox drain, a concurrent handler, a
request with a deadline — calls its handler as ``await calls.start(ctx, message)`` and
turns a failure into what its sender sees with :meth:`Calls.failed`. ``start`` is chosen
when hooks or middleware change: for a *plain* runtime (neither) and a message outside a
query it returns the handler's own coroutine (no wrapper coroutine), else the coroutine of
the call path built for its hooks and middleware (``_call_path``). The idle fast path of
``send`` copies the plain case inline (marked ``INLINE``); instruction counts in
docs/performance.md (architecture).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from engine.errors import DeadlineExceeded, QueryCancelled, RemoteError
from engine.runtime._books import Books
from engine.runtime._hooks import Hooks, Middleware, compose

if TYPE_CHECKING:
    from engine.agents import Context

__all__ = ["Calls", "remote_error"]

_clock = time.perf_counter
Start = Callable[["Context", Any], Awaitable[Any]]


async def _terminal(ctx: Context, message: Any) -> Any:
    """The innermost link of the middleware chain: the handler itself."""
    route = ctx.route
    if route.is_async:
        return await route.fn(ctx.agent, message, ctx)
    return route.fn(ctx.agent, message, ctx)


def remote_error(exc: BaseException) -> BaseException:
    """What the sender sees when a handler raised ``exc``."""
    if isinstance(exc, (RemoteError, QueryCancelled, DeadlineExceeded)):
        return exc  # already says what happened further down the call tree
    err = RemoteError(type(exc).__name__, str(exc))
    err.__cause__ = exc
    return err


class Calls:
    """How a runtime calls handlers; rebuilt whenever its hooks or middleware change.

    ``plain`` is True with no hooks and no middleware: then a call outside a query is the
    handler and nothing else.
    """

    __slots__ = ("books", "chain", "err", "hooks", "middleware", "plain", "post", "pre", "start")

    def __init__(self, books: Books, hooks: Hooks) -> None:
        self.books = books
        self.hooks = hooks
        self.middleware: tuple[Middleware, ...] = ()
        self.chain: Callable[[Any, Any], Awaitable[Any]] = _terminal
        self.plain = True
        self.pre: tuple[Callable[..., Any], ...] = ()
        self.post: tuple[Callable[..., Any], ...] = ()
        self.err: tuple[Callable[..., Any], ...] = ()
        #: ``start(ctx, message)``: begin ``ctx``'s handler on ``message``; await the result
        #: for its reply. The handler's exception comes out as raised (the caller passes it
        #: to :meth:`failed`). Plain: the handler's own coroutine, else ``_call_path``'s.
        self.start: Start = _plain_start(_call_path(self))

    def rebuild(self, middleware: tuple[Middleware, ...]) -> None:
        """Compose ``middleware`` once and take the current hooks (not per call)."""
        self.middleware = middleware
        self.chain = compose(middleware, _terminal)
        hooks = self.hooks
        self.pre, self.post, self.err = hooks.pre_handler, hooks.post_handler, hooks.on_error
        self.plain = not middleware and not self.pre and not self.post and not self.err
        call = _call_path(self)
        self.start = _plain_start(call) if self.plain else call

    def failed(self, exc: BaseException) -> BaseException:
        """Count a handler failure; return what its sender sees."""
        self.books.counts["error"] += 1
        return remote_error(exc)


def _call_path(calls: Calls) -> Start:
    """The call with query step checks, hooks or middleware, for ``calls`` as they are now.

    PERF: built when hooks or middleware change, with them bound as closure cells (no
    attribute loads per call): ``runtime.send_hooks`` 2,627,000 -> 2,615,000 instructions
    per batch of 200 (0.995; ``engine bench --compare main --instructions -k runtime``).
    The rest of its cost over a plain send is this coroutine itself: only a second inline
    copy on the idle fast path would save it (docs/performance.md, issue 18 phase 2).
    """
    pre, post, err, hooks = calls.pre, calls.post, calls.err, calls.hooks
    chain = calls.chain if calls.middleware else None

    async def call(ctx: Context, message: Any) -> Any:
        query = ctx.query
        if query is not None:
            if query.blocked:
                await query.checkpoint()
            query.steps += 1
        try:
            for hook in pre:
                hook(ctx, message)
            t0 = _clock() if post else 0.0
            if chain is not None:
                result = await chain(ctx, message)
            else:
                route = ctx.route
                if route.is_async:
                    result = await route.fn(ctx.agent, message, ctx)
                else:
                    result = route.fn(ctx.agent, message, ctx)
            if post:
                seconds = _clock() - t0
                for hook in post:
                    hook(ctx, message, result, seconds)
        except Exception as exc:
            if err:
                hooks.call("on_error", ctx, message, exc)
            raise
        return result

    return call


def _plain_start(call: Callable[[Context, Any], Awaitable[Any]]) -> Start:
    """``Calls.start`` of a runtime without hooks or middleware (a query still checks)."""

    def start(ctx: Context, message: Any) -> Awaitable[Any]:
        if ctx.query is None:
            route = ctx.route
            if route.is_async:
                coro: Awaitable[Any] = route.fn(ctx.agent, message, ctx)
                return coro
            return _Ready(route.fn(ctx.agent, message, ctx))
        return call(ctx, message)

    return start


class _Ready:
    """The result of a plain sync handler, awaitable like a coroutine's (no task switch)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator: awaiting it returns ``value`` at once
