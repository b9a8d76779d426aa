"""Delivery: ``send``, ``publish`` and ``post`` — the paths every message takes.

``send`` to an idle agent runs the handler right in the caller's task — no queue, no
future, no task switch — which is why a sequential round trip costs about a microsecond.
A request for a busy agent goes into its mailbox with a future (:mod:`._mailbox`);
``publish`` and ``post`` always queue (fire and forget); handlers marked ``concurrent``
skip the mailbox. A message for an agent type this runtime does not host goes to the
transport (:mod:`._remote`). Every handler runs through :meth:`Calls.start
<engine.runtime._calls.Calls.start>`, except the one inline copy on the idle fast path.

:class:`Delivery` is the part of :class:`~engine.runtime.Runtime` that moves messages;
the runtime's other part (``_local.py``) makes and owns the pieces it routes between.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

from engine.agents import Agent, Context, Route
from engine.errors import DeadlineExceeded, MailboxFull, RoutingError, UndeliverableError
from engine.messages import AgentId, TopicId
from engine.observe.tracing import current_traceparent
from engine.runtime._queries import current_query

if TYPE_CHECKING:
    from engine.observe.tracing import Tracer
    from engine.runtime._agents import Agents, AgentType
    from engine.runtime._books import Books
    from engine.runtime._calls import Calls
    from engine.runtime._deadlines import Deadlines
    from engine.runtime._fanout import Fanout
    from engine.runtime._mailbox import Mailboxes
    from engine.runtime._remote import Remote
    from engine.runtime._subscriptions import Subscriptions
    from engine.runtime._transport import Transport

__all__ = ["Delivery", "check_timeout"]


class Delivery:
    """Message paths of a runtime; the pieces are made by ``Runtime.__init__``."""

    origin: str
    _types: dict[str, AgentType]
    _books: Books
    _agents: Agents
    _calls: Calls
    _mailboxes: Mailboxes
    _fanout: Fanout
    _remote: Remote
    _deadlines: Deadlines
    _subs: Subscriptions
    _transport: Transport | None
    _started: bool
    tracer: Tracer | None

    def _check_open(self) -> None:
        if self._books.closed:
            raise UndeliverableError("runtime is stopped")

    # -- send ----------------------------------------------------------------------
    async def send(
        self,
        message: Any,
        *,
        to: AgentId,
        timeout: float | None = None,
        sender: AgentId | None = None,
        traceparent: str = "",
    ) -> Any:
        """Deliver ``message`` to ``to`` and return the handler's reply.

        A handler exception arrives as :class:`RemoteError`; ``timeout`` (seconds)
        raises :class:`DeadlineExceeded` and cancels the handler; cancelling the caller
        cancels the handler too. An unknown agent type raises UndeliverableError.
        ``traceparent`` (W3C trace context) is carried to the handler's ``ctx`` and onto
        the wire; ``ctx.send`` passes its own on.
        """
        t = self._types.get(to.type) if type(to) is AgentId else None
        if t is None:
            return await self._send_other(message, to, timeout, sender, traceparent)
        books = self._books
        if books.closed:
            raise UndeliverableError("runtime is stopped")
        agent = t.instances.get(to.key)
        if agent is None:
            if t.balanced and to.key == "*":
                return await self._send_balanced(t, message, timeout, sender, traceparent)
            agent = await self._agents.ensure(t, to)
        route = agent._routes.get(type(message))
        if route is None:
            route = self._no_route(agent, message)
        books.seq = seq = books.seq + 1
        query = current_query.get()
        ctx = Context(self, agent, route, message, sender, None, seq, query, 0.0, traceparent)
        if agent._busy and not route.concurrent:
            if sender is not None and sender == to:
                raise UndeliverableError(
                    f"{to} sent {type(message).__name__} to itself while busy, which would "
                    "wait forever; use post/publish or a concurrent handler"
                )
            if timeout is None:
                return await self._mailboxes.request(agent, ctx, t.capacity, t.policy)
            return await self._queue_within(agent, ctx, timeout, t)
        if timeout is not None:
            return await self._call_within(agent, ctx, timeout)
        # The target is idle: run its handler in this task (no queue, no task switch).
        books.active += 1
        concurrent = route.concurrent
        if not concurrent:
            agent._busy = True
        calls = self._calls
        try:
            if query is None and calls.plain:
                # INLINE: Calls.start's plain case, copied onto the idle fast path: one
                # call less per round trip, 5% of its instructions (docs/performance.md).
                if route.is_async:
                    return await route.fn(agent, message, ctx)
                return route.fn(agent, message, ctx)
            return await calls.start(ctx, message)
        except Exception as exc:
            raise calls.failed(exc) from exc
        finally:
            books.active -= 1
            agent._tick = seq
            if not concurrent:
                if agent._mb:
                    self._mailboxes.start_drain(agent)
                else:
                    agent._busy = False
            if not books.active and books.waiters:
                books.wake()

    async def _send_balanced(
        self,
        t: AgentType,
        message: Any,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str,
    ) -> Any:
        """``AgentId(type, "*")``: the balancer picks a live instance; acked when done."""
        balancer = self._agents.balancer
        assert balancer is not None
        try:
            slot = balancer.pick(t.name)
        except RoutingError:
            raise UndeliverableError(
                f"no live instance of {t.name!r} to pick for {type(message).__name__} "
                "(spawn some first)"
            ) from None
        try:
            return await self.send(
                message,
                to=balancer.agent(slot),
                timeout=timeout,
                sender=sender,
                traceparent=traceparent,
            )
        finally:
            with contextlib.suppress(RoutingError):  # evicted meanwhile
                balancer.ack(slot)

    def _no_route(self, agent: Agent, message: Any) -> Route:
        route = agent.route_for(type(message))
        if route is None:
            raise UndeliverableError(
                f"{type(agent).__name__} ({agent.id}) has no handler for {type(message).__name__}"
            )
        return route

    async def _call_within(self, agent: Agent, ctx: Context, timeout: float) -> Any:
        """A request with a deadline to an idle agent: the handler runs in this task,
        which is cancelled if the deadline passes (one loop timer for all: _deadlines)."""
        check_timeout(timeout)
        ctx.deadline = asyncio.get_running_loop().time() + timeout
        books = self._books
        books.active += 1
        concurrent = ctx.route.concurrent
        if not concurrent:
            agent._busy = True
        task = asyncio.current_task()
        assert task is not None
        deadline = self._deadlines.add(ctx.deadline, task)
        try:
            result = await self._calls.start(ctx, ctx.message)
        except asyncio.CancelledError:
            if deadline[3]:  # expired
                task.uncancel()
                raise _late(agent, ctx, timeout) from None
            raise
        except Exception as exc:
            raise self._calls.failed(exc) from exc
        else:
            if deadline[3]:  # expired, but the handler swallowed its cancellation
                task.uncancel()
            return result
        finally:
            self._deadlines.done(deadline)
            books.active -= 1
            agent._tick = ctx.seq
            if not concurrent:
                self._mailboxes.release(agent)
            if not books.active:
                books.wake()

    def _queue_within(
        self, agent: Agent, ctx: Context, timeout: float, t: AgentType
    ) -> Awaitable[Any]:
        """A request with a deadline to a busy agent: queued, and given up (skipped, or
        its handler cancelled) if the deadline passes first."""
        check_timeout(timeout)
        ctx.deadline = asyncio.get_running_loop().time() + timeout
        work = self._mailboxes.request(agent, ctx, t.capacity, t.policy)
        return self._deadlines.within(ctx.deadline, work, lambda: _late(agent, ctx, timeout))

    async def send_many(
        self,
        requests: Iterable[tuple[Any, AgentId]],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Send many ``(message, to)`` pairs concurrently; replies in request order."""
        coros = [self.send(m, to=to, timeout=timeout) for m, to in requests]
        return await asyncio.gather(*coros, return_exceptions=return_exceptions)

    # -- publish -------------------------------------------------------------------
    async def publish(
        self,
        message: Any,
        *,
        topic: str | TopicId,
        sender: AgentId | None = None,
        local_only: bool = False,
        traceparent: str = "",
    ) -> int:
        """Fan ``message`` out to the subscribers of ``topic``; returns local deliveries.

        Handlers run later, in each agent's own order; their exceptions are logged and
        passed to ``on_error`` hooks (nobody awaits a reply). With a transport the message
        also goes out to other runtimes unless ``local_only`` (set for inbound messages).
        """
        if type(topic) is str:
            subs = self._subs.match(topic)
            topic_id = TopicId(topic)
        elif isinstance(topic, TopicId):
            subs = self._subs.match(topic.type)
            topic_id = topic
        else:
            raise TypeError(f"topic must be a str or TopicId, got {type(topic).__name__}")
        books = self._books
        if books.closed:
            raise UndeliverableError("runtime is stopped")
        if self.tracer is not None and not traceparent:  # handlers run later, in other tasks
            traceparent = current_traceparent()
        books.seq = seq = books.seq + 1
        delivered = 0
        if subs:
            mailboxes = self._mailboxes
            query = current_query.get()
            mtype = type(message)
            full: list[str] = []
            for sub in subs:
                t = sub.target
                key = sub.fixed
                if key is None:
                    key = topic_id.source if sub.by_source else sub.key_for(topic_id, message)
                agent = t.instances.get(key)
                if agent is None:
                    agent = await self._agents.ensure(t, AgentId(t.name, key))
                route = agent._routes.get(mtype) or agent.route_for(mtype)
                if route is None:
                    continue  # this subscriber does not handle the message class
                ctx = Context(
                    self, agent, route, message, sender, topic_id, seq, query, 0.0, traceparent
                )
                if route.concurrent:
                    self._fanout.run_concurrent(ctx)
                    delivered += 1
                    continue
                mb = agent._mb
                if mb is not None and len(mb) >= t.capacity:
                    if t.policy == "reject":
                        full.append(str(agent.id))
                        continue
                    await mailboxes.reserve(agent, t.capacity, t.policy)
                    mb = agent._mb
                if mb is None:
                    mb = agent._mb = deque()
                # Mailboxes.push, inline (the trace context is settled above): one call
                # less per subscriber.
                mb.append(ctx)
                books.active += 1
                delivered += 1
                if not agent._busy:
                    agent._busy = True
                    mailboxes.start_drain(agent)
            if full:
                raise MailboxFull(
                    f"published {type(message).__name__} dropped for full mailboxes: "
                    + ", ".join(full)
                )
        counts = books.counts
        counts["publish"] += 1
        counts["delivered"] += delivered
        if self._transport is not None and self._started and not local_only:
            tp = traceparent or current_traceparent()
            self._remote.publish(message, topic_id, seq, sender, tp)
        return delivered

    async def post(
        self,
        message: Any,
        *,
        to: AgentId,
        sender: AgentId | None = None,
        traceparent: str = "",
    ) -> None:
        """One-way delivery to one agent: queued like a published message, no reply.

        Returns once the message is in the agent's mailbox (waiting for space under the
        ``block`` policy; ``MailboxFull`` under ``reject``). Handler errors are logged.
        """
        t = self._types.get(to.type) if type(to) is AgentId else None
        if t is None:
            if not isinstance(to, AgentId):
                raise TypeError(f"to= must be an AgentId, got {type(to).__name__}")
            raise UndeliverableError(
                f"no agent type {to.type!r} is registered (registered: {self._agents.known()})"
            )
        self._check_open()
        agent = t.instances.get(to.key)
        if agent is None:
            agent = await self._agents.ensure(t, to)
        route = agent._routes.get(type(message)) or self._no_route(agent, message)
        await self._fanout.post(t, agent, route, message, sender, traceparent)

    async def publish_many(
        self, items: Iterable[tuple[Any, str | TopicId]], *, sender: AgentId | None = None
    ) -> int:
        """Publish many ``(message, topic)`` pairs in order; returns local deliveries."""
        total = 0
        for message, topic in items:
            total += await self.publish(message, topic=topic, sender=sender)
        return total

    async def _send_other(
        self,
        message: Any,
        to: AgentId,
        timeout: float | None,
        sender: AgentId | None,
        traceparent: str,
    ) -> Any:
        if not isinstance(to, AgentId):
            raise TypeError(f"to= must be an AgentId, got {type(to).__name__}")
        self._check_open()
        if self._transport is None or not self._started:
            raise UndeliverableError(
                f"no agent type {to.type!r} is registered (registered: {self._agents.known()})"
            )
        if timeout is not None:
            check_timeout(timeout)
        if not traceparent:  # continue the innermost Tracer.span open here, if any
            traceparent = current_traceparent()
        return await self._remote.send(
            message, to=to, timeout=timeout, sender=sender, traceparent=traceparent
        )


def check_timeout(timeout: object) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def _late(agent: Agent, ctx: Context, timeout: float) -> DeadlineExceeded:
    name = type(ctx.message).__name__
    return DeadlineExceeded(f"{agent.id} did not reply to {name} within {timeout}s")
