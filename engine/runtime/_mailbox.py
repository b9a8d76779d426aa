"""Mailboxes: queueing for a busy agent, draining in order, backpressure.

Every agent instance has a lazily created mailbox (a deque of :class:`~engine.Context`, one
object per queued delivery) and a busy flag. A message for a busy agent is queued; whoever
frees the agent starts one drain task, which handles the mailbox in order and keeps the
agent busy meanwhile. A full mailbox makes its sender wait for space (``"block"``) or
raises :class:`~engine.errors.MailboxFull` (``"reject"``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Literal

from engine.errors import MailboxFull, QueryCancelled, UndeliverableError
from engine.observe.tracing import current_traceparent
from engine.runtime._books import Books
from engine.runtime._calls import Calls
from engine.runtime._queries import current_query

if TYPE_CHECKING:
    from engine.agents import Agent, Context

__all__ = ["DEFAULT_MAILBOX", "POLICIES", "Mailboxes", "Policy", "check_mailbox"]

log = logging.getLogger("engine.runtime")

Policy = Literal["block", "reject"]
#: Default mailbox capacity (messages) per agent instance.
DEFAULT_MAILBOX: Final = 1024
POLICIES: Final = ("block", "reject")


def check_mailbox(capacity: object, policy: object) -> None:
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError(f"mailbox capacity must be a positive int, got {capacity!r}")
    if policy not in POLICIES:
        raise ValueError(f"mailbox policy must be one of {POLICIES}, got {policy!r}")


class Mailboxes:
    """The mailboxes of one runtime's agents (the state lives on each agent)."""

    __slots__ = ("books", "calls", "tracing")

    def __init__(self, books: Books, calls: Calls) -> None:
        self.books = books
        self.calls = calls
        #: True when the runtime traces: a queued message then keeps the sender's trace.
        self.tracing = False

    # -- queueing ------------------------------------------------------------------
    async def request(self, agent: Agent, ctx: Context, capacity: int, policy: str) -> Any:
        """Queue a request for busy ``agent`` and wait for its reply."""
        mb = agent._mb
        if mb is not None and len(mb) >= capacity:
            await self.reserve(agent, capacity, policy)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ctx._reply = fut
        self.push(agent, ctx)
        try:
            return await fut
        except asyncio.CancelledError:
            # The sender gave up (cancel or timeout): a queued request is skipped by the
            # drain (its future is done); a running one gets its handler cancelled.
            if agent._current is fut and agent._task is not None:
                agent._task.cancel()
            raise

    async def reserve(self, agent: Agent, capacity: int, policy: str) -> None:
        """Make room for one message in ``agent``'s mailbox (wait or raise per policy)."""
        mb = agent._mb
        if mb is None:
            mb = agent._mb = deque()
        if len(mb) < capacity:
            return
        if policy == "reject":
            raise MailboxFull(f"mailbox of {agent.id} is full ({capacity} messages)")
        loop = asyncio.get_running_loop()
        while len(mb) >= capacity:
            if agent._wait is None:
                agent._wait = deque()
            space: asyncio.Future[None] = loop.create_future()
            agent._wait.append(space)
            try:
                await space
            except asyncio.CancelledError:
                if space.done() and not space.cancelled():
                    wake_one(agent)  # pass our wake-up on
                raise

    def push(self, agent: Agent, ctx: Context) -> None:
        """Queue ``ctx`` (room was reserved) and start a drain if the agent is idle."""
        if self.tracing and not ctx.traceparent:  # runs later, in another task
            ctx.traceparent = current_traceparent()
        mb = agent._mb
        if mb is None:
            mb = agent._mb = deque()
        mb.append(ctx)
        self.books.active += 1
        if not agent._busy:
            agent._busy = True
            self.start_drain(agent)

    def release(self, agent: Agent) -> None:
        """``agent`` finished a message outside its drain: drain what queued meanwhile."""
        if agent._mb:
            self.start_drain(agent)
        else:
            agent._busy = False

    def start_drain(self, agent: Agent) -> None:
        agent._task = asyncio.get_running_loop().create_task(self._drain(agent))

    # -- draining ------------------------------------------------------------------
    async def _drain(self, agent: Agent) -> None:
        """Handle ``agent``'s queued messages in order; the agent stays busy meanwhile."""
        mb = agent._mb
        assert mb is not None
        task = agent._task
        books = self.books
        calls = self.calls
        start = calls.start
        current = current_query.get()
        seq = 0
        try:
            while mb:
                ctx = mb.popleft()
                fut = ctx._reply
                if agent._wait:
                    wake_one(agent)
                seq = ctx.seq
                query = ctx.query
                if query is not current:
                    current_query.set(query)
                    current = query
                if fut is None:  # published or posted: nobody waits for a result
                    try:
                        await start(ctx, ctx.message)
                    except Exception as exc:
                        calls.failed(exc)
                        if not isinstance(exc, QueryCancelled):
                            log_failure(ctx, exc)
                    finally:
                        books.active -= 1
                    continue
                if fut.done():  # the sender gave up (timeout/cancel)
                    books.active -= 1
                    continue
                agent._current = fut
                try:
                    result = await start(ctx, ctx.message)
                except asyncio.CancelledError:
                    if not fut.cancelled() or books.closed:
                        raise
                    if task is not None:
                        task.uncancel()  # only this request was cancelled; keep draining
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(calls.failed(exc))
                else:
                    if not fut.done():
                        fut.set_result(result)
                    elif fut.cancelled() and task is not None and task.cancelling():
                        task.uncancel()  # the handler swallowed its cancellation
                finally:
                    agent._current = None
                    ctx._reply = None  # no ctx -> future -> error -> frame -> ctx cycle
                    books.active -= 1
        finally:
            agent._task = None
            agent._busy = False
            if seq:
                agent._tick = seq
            if mb:  # cancelled while messages remain: fail them
                self.fail(agent, f"{agent.id} stopped")
            if not books.active:
                books.wake()

    def fail(self, agent: Agent, reason: str) -> None:
        """Fail every message still queued for ``agent`` with UndeliverableError."""
        mb = agent._mb
        books = self.books
        while mb:
            fut = mb.popleft()._reply
            books.active -= 1
            if fut is not None and not fut.done():
                fut.set_exception(UndeliverableError(reason))


def wake_one(agent: Agent) -> None:
    """Let the first sender still waiting for space in ``agent``'s mailbox go on."""
    waiters = agent._wait
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def log_failure(ctx: Context, exc: Exception) -> None:
    """A handler of a message nobody awaits failed (published, posted, concurrent)."""
    log.error(
        "handler %s of %s failed on published %s",
        ctx.route.name,
        ctx.agent.id,
        type(ctx.message).__name__,
        exc_info=exc,
    )
