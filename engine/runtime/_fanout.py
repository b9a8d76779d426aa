"""One-way delivery: ``post``, and concurrent handlers of one-way messages.

Nobody awaits a reply: a posted message is queued in its agent's mailbox (or, for a
``concurrent`` handler, run in a task of its own, as published ones are too) and its
handler's failure is logged. ``publish``'s fan-out stays inline in ``Runtime.publish``
(one coroutine less per publish; docs/performance.md, architecture).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.agents import Context
from engine.errors import QueryCancelled
from engine.messages import AgentId
from engine.runtime._agents import Agents, AgentType
from engine.runtime._books import Books
from engine.runtime._calls import Calls
from engine.runtime._mailbox import Mailboxes, log_failure
from engine.runtime._queries import current_query

if TYPE_CHECKING:
    from engine.agents import Agent, Route

__all__ = ["Fanout"]


class Fanout:
    """Queues one-way deliveries for one runtime (``owner``: what ``ctx.runtime`` is)."""

    __slots__ = ("agents", "books", "calls", "mailboxes", "owner")

    def __init__(
        self, owner: Any, books: Books, calls: Calls, mailboxes: Mailboxes, agents: Agents
    ) -> None:
        self.owner = owner
        self.books = books
        self.calls = calls
        self.mailboxes = mailboxes
        self.agents = agents

    async def post(
        self,
        t: AgentType,
        agent: Agent,
        route: Route,
        message: Any,
        sender: AgentId | None,
        traceparent: str,
    ) -> None:
        """Queue ``message`` for ``agent`` (waiting for room under ``block``)."""
        books = self.books
        seq = books.next_id()
        books.counts["post"] += 1
        query = current_query.get()
        ctx = Context(self.owner, agent, route, message, sender, None, seq, query, 0.0, traceparent)
        if route.concurrent:
            self.run_concurrent(ctx)
            return
        await self.mailboxes.reserve(agent, t.capacity, t.policy)
        self.mailboxes.push(agent, ctx)

    def run_concurrent(self, ctx: Context) -> None:
        """A concurrent handler of a one-way message: a task of its own."""
        self.books.active += 1
        self.agents.in_background(self._concurrent(ctx))

    async def _concurrent(self, ctx: Context) -> None:
        try:
            await self.calls.start(ctx, ctx.message)
        except Exception as exc:
            self.calls.failed(exc)
            if not isinstance(exc, QueryCancelled):
                log_failure(ctx, exc)
        finally:
            self.books.settle()
