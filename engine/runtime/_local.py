"""The in-process runtime: its parts, lifecycle, registration, queries and transport.

A :class:`Runtime` owns its parts and routes between them: :class:`~._books.Books` (ids,
work in flight, idle waiters, counters; shared with the transport side,
:class:`~._remote.Remote`), :class:`~._calls.Calls` (the one handler-call path),
:class:`~._mailbox.Mailboxes`, :class:`~._agents.Agents` (types and instances) and
:class:`~._fanout.Fanout` (one-way delivery). The message paths themselves, ``send``,
``publish`` and ``post``, are in :mod:`._delivery`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from engine._transports import transport_for
from engine.agents import Agent
from engine.errors import EngineError, UndeliverableError
from engine.messages import AgentId, Envelope
from engine.runtime._agents import Agents, Factory
from engine.runtime._books import Books
from engine.runtime._calls import Calls
from engine.runtime._deadlines import Deadlines
from engine.runtime._delivery import Delivery
from engine.runtime._fanout import Fanout
from engine.runtime._hooks import Hooks, Middleware
from engine.runtime._mailbox import DEFAULT_MAILBOX, Mailboxes, Policy, check_mailbox
from engine.runtime._queries import Query, QueryState
from engine.runtime._remote import Remote
from engine.runtime._spawn import Spawn
from engine.runtime._subscriptions import KeyFn, Subscription, Subscriptions
from engine.runtime._transport import Transport

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from engine.observe.metrics import Metrics
    from engine.observe.server import ObserveServer
    from engine.tools import ToolRegistry

__all__ = ["DEFAULT_MAILBOX", "Policy", "Runtime", "Spawn"]


class Runtime(Delivery):
    """The in-process agent runtime (use as ``async with Runtime() as rt``).

    ``mailbox`` and ``policy`` are the defaults per agent type (``"block"``: a sender
    awaits space; ``"reject"``: raise :class:`MailboxFull`). ``max_agents`` bounds the
    registry: beyond it the least recently used idle agents are evicted (and recreated
    on their next message). ``transport`` connects this runtime to others;
    ``mesh="tcp://HOST:5555"`` is short for ``transport=engine.mesh.MeshTransport(...)``
    (resolved through the transport registry, which ``engine.mesh`` fills).

    ``metrics`` (an :class:`engine.observe.Metrics`) exports this runtime's counters and
    gauges, read at scrape time only (no per-message cost); ``metrics_port`` serves
    ``/metrics`` and ``/debug/profile`` on 127.0.0.1 from :meth:`start` to :meth:`stop`
    (a fresh ``Metrics`` when none is given; 0 picks a free port, see ``metrics_url``).

    ``tracer_provider`` (an OpenTelemetry ``TracerProvider``) gives every handler and tool
    call a span on it; by default the application's global provider is used when it has set
    one by the time the runtime is made. With neither, no span is opened and handlers are
    called directly. Pass ``opentelemetry.trace.NoOpTracerProvider()`` to turn tracing off.
    """

    def __init__(
        self,
        *,
        mailbox: int = DEFAULT_MAILBOX,
        policy: Policy = "block",
        max_agents: int | None = None,
        transport: Transport | None = None,
        tool_workers: int = 8,
        origin: str | None = None,
        mesh: str | None = None,
        metrics: Metrics | None = None,
        metrics_port: int | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        check_mailbox(mailbox, policy)
        if mesh is not None:  # Runtime(mesh="tcp://HOST:5555"): the ZeroMQ mesh transport
            if transport is not None:
                raise ValueError("pass either mesh= or transport=, not both")
            transport = transport_for("mesh", mesh)
        if max_agents is not None and (not isinstance(max_agents, int) or max_agents < 1):
            raise ValueError(f"max_agents must be a positive int or None, got {max_agents!r}")
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ValueError(f"origin must be a non-empty str, got {origin!r}")
        self.origin: str = origin or os.urandom(8).hex()
        self._mailbox = mailbox
        self._policy = policy
        self._subs = Subscriptions()
        self._started = False
        self._transport = transport
        self.hooks = Hooks(self._rebuild)
        self._books = books = Books()
        self._calls = calls = Calls(books, self.hooks)
        self._mailboxes = Mailboxes(books, calls)
        self._agents = Agents(self, books, calls, self._mailboxes, self.hooks, max_agents)
        self._types = self._agents.types  # the same dict: one lookup on the hot path
        self._fanout = Fanout(self, books, calls, self._mailboxes, self._agents)
        self._remote = Remote(self, books, transport)
        self._deadlines = Deadlines()
        self._queries: dict[int, Query] = {}  # id(query) -> query, unfinished only
        from engine.tools import ToolRegistry

        self.tools: ToolRegistry = ToolRegistry(self, workers=tool_workers)
        self.metrics: Metrics | None = None
        self._observe: ObserveServer | None = None
        if metrics is not None or metrics_port is not None:
            from engine.runtime._observing import instrument

            self.metrics, self._observe = instrument(self, metrics, metrics_port)
        from engine.runtime._tracing import runtime_tracer, tracing_middleware

        self.tracer = runtime_tracer(tracer_provider)  # None: tracing off
        self._mailboxes.tracing = self.tracer is not None
        if self.tracer is not None:
            self.use(tracing_middleware(self.tracer))

    @property
    def metrics_url(self) -> str | None:
        """``http://127.0.0.1:PORT`` of the running metrics endpoint, else None."""
        srv = self._observe
        return srv.url if srv is not None and srv.running else None

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the transport (if any); local delivery works without calling this."""
        if self._started:
            return
        if self._books.closed:
            raise EngineError("runtime was stopped; create a new one")
        if self._observe is not None:
            self._observe.start()
        self._started = True
        if self._transport is not None:
            await self._transport.start(self)
            for name in self._types:
                self._transport.announce(name)
            for sub in self._subs:
                self._transport.subscribe(sub.pattern)

    async def stop(self) -> None:
        """Stop: cancel running work, call ``on_stop`` of every agent, close the transport."""
        books = self._books
        if books.closed:
            return
        books.closed = True
        for q in list(self._queries.values()):
            q.terminate()
        agents = self._agents
        tasks = [a._task for a in agents.live() if a._task]
        tasks += list(agents.background) + list(self._remote.serving.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._remote.pending.values():
            fut.cancel()
        await agents.stop(agents.clear())
        self.tools.close()
        self._deadlines.close()
        if self._transport is not None and self._started:
            await self._transport.close()
        if self._observe is not None and self._observe.running:
            await asyncio.to_thread(self._observe.close)
        books.wake()

    async def idle(self) -> None:
        """Wait until no message is queued or being handled."""
        await self._books.idle()

    async def stop_when_idle(self) -> None:
        """Wait until idle, then :meth:`stop`."""
        await self.idle()
        await self.stop()

    # -- registration --------------------------------------------------------------
    def register(
        self,
        agent_type: str,
        factory: type[Agent] | Factory,
        *,
        mailbox: int | None = None,
        policy: Policy | None = None,
        balance: str | None = None,
    ) -> None:
        """Register ``factory`` (an Agent subclass or a function returning an agent).

        ``balance`` (``"round_robin"`` or ``"least_outstanding"``) makes
        ``AgentId(agent_type, "*")`` pick one of the live instances through the native
        router instead of naming one.
        """
        capacity = self._mailbox if mailbox is None else mailbox
        pol = self._policy if policy is None else policy
        cls = self._agents.register(agent_type, factory, capacity, pol, balance)
        if cls is not None:
            for mtype in cls._routes:
                self._remote.messages.add(mtype)
        if self._transport is not None and self._started:
            self._transport.announce(agent_type)

    def subscribe(
        self, agent_type: str, *, topic: str, key: str | KeyFn | None = None
    ) -> Subscription:
        """Deliver messages published to topics matching ``topic`` to ``agent_type``.

        The instance key is the topic's ``source`` by default, ``key`` if it is a str,
        or ``key(topic_id, message)``.
        """
        if agent_type not in self._types:
            raise UndeliverableError(f"cannot subscribe unregistered agent type {agent_type!r}")
        sub = self._subs.add(agent_type, topic, key)
        sub.target = self._types[agent_type]
        if self._transport is not None and self._started:
            self._transport.subscribe(topic)
        return sub

    def unsubscribe(self, subscription: Subscription | int) -> None:
        """Remove a subscription (RoutingError if unknown)."""
        sid = subscription.id if isinstance(subscription, Subscription) else subscription
        self._subs.remove(sid)

    def use(self, middleware: Middleware) -> Callable[[], None]:
        """Append ``middleware`` to the chain around every handler and tool call."""
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {type(middleware).__name__}")
        calls = self._calls
        calls.middleware = (*calls.middleware, middleware)
        self._rebuild()

        def remove() -> None:
            items = list(calls.middleware)
            if middleware not in items:
                raise ValueError(f"middleware {middleware!r} was already removed")
            items.remove(middleware)
            calls.middleware = tuple(items)
            self._rebuild()

        return remove

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        return self._calls.middleware

    @property
    def _plain(self) -> bool:
        """No hooks and no middleware: handlers are called directly (for tests)."""
        return self._calls.plain

    def _rebuild(self) -> None:
        middleware = self._calls.middleware
        self._calls.rebuild(middleware)
        self.tools.set_middleware(middleware)

    # -- agents --------------------------------------------------------------------
    @property
    def agent_count(self) -> int:
        return self._agents.count

    def stats(self) -> dict[str, int]:
        """Point-in-time gauges for metrics collectors (O(agents); call at scrape time)."""
        return {
            **self._agents.gauges(),
            "in_flight": self._books.active,
            "remote_pending": len(self._remote.pending),
            "remote_serving": len(self._remote.serving),
            "subscriptions": len(self._subs),
        }

    def full_mailboxes(self) -> list[AgentId]:
        """Live agents whose mailbox is full (for readiness checks)."""
        return self._agents.full()

    def agents(self, agent_type: str | None = None) -> list[AgentId]:
        """Ids of live instances (of one type, or all)."""
        if agent_type is None:
            return [a.id for a in self._agents.live()]
        return [a.id for a in self._agents.entry(agent_type).instances.values()]

    def get(self, agent_id: AgentId) -> Agent | None:
        """The live instance for ``agent_id`` or None (does not create it)."""
        if not isinstance(agent_id, AgentId):
            raise TypeError(f"expected an AgentId, got {type(agent_id).__name__}")
        return self._agents.get(agent_id)

    async def spawn(self, agent_id: AgentId) -> Agent:
        """Create (and start) ``agent_id`` now; returns the existing instance if live."""
        if not isinstance(agent_id, AgentId):
            raise TypeError(f"spawn expects an AgentId, got {type(agent_id).__name__}")
        self._check_open()
        t = self._agents.entry(agent_id.type)
        agent = t.instances.get(agent_id.key)
        return agent if agent is not None else await self._agents.ensure(t, agent_id)

    async def spawn_many(self, specs: Iterable[AgentId | Spawn]) -> list[Agent]:
        """Spawn many agents; those named in ``needs`` are started first, others in parallel.

        Raises :class:`CycleError` for circular needs and UndeliverableError for a need
        that is neither in ``specs`` nor live. Returns the agents in ``specs`` order.
        """
        self._check_open()
        return await self._agents.spawn_many(specs)

    async def evict(self, agent_id: AgentId) -> bool:
        """Remove an idle instance (``on_stop`` runs); False if absent or busy."""
        agent = self.get(agent_id)
        if agent is None or agent._busy or agent._mb:
            return False
        self._agents.forget(agent)
        await self._agents.stop([agent])
        return True

    def message_counts(self) -> dict[str, int]:
        """Totals since start by kind, for metrics (``engine_messages_total{kind}``).

        ``send`` local requests, ``publish`` publish calls, ``delivered`` their local
        deliveries, ``post`` one-way sends, ``remote_send`` requests through the
        transport, ``served`` inbound requests handled here, ``error`` handler failures.
        """
        return self._books.message_counts()

    # -- queries -------------------------------------------------------------------
    def start_query(
        self,
        request: Any,
        *,
        to: AgentId | None = None,
        timeout: float | None = None,
        name: str | None = None,
        start: bool = True,
    ) -> Query:
        """Start a query: ``request`` sent to ``to``, or ``request(query)`` if no ``to``.

        Returns the :class:`Query` handle (RUNNING, or INIT with ``start=False``).
        """
        self._check_open()
        if to is None:
            if not callable(request):
                raise TypeError("start_query needs to= for a message, or an async function")
            fn = request

            async def body(q: Query) -> Any:
                return await fn(q)

        else:
            if not isinstance(to, AgentId):
                raise TypeError(f"to= must be an AgentId, got {type(to).__name__}")
            msg = request

            async def body(q: Query) -> Any:
                return await self.send(msg, to=to, timeout=timeout)

        q = Query(body, name or f"q{self._books.next_id()}")
        self._queries[id(q)] = q
        q.add_listener(self._query_changed)
        return q.start() if start else q

    @property
    def queries(self) -> list[Query]:
        """Queries started here that have not finished yet."""
        return list(self._queries.values())

    def _query_changed(self, q: Query, state: QueryState) -> None:
        if state.terminal:
            self._queries.pop(id(q), None)

    # -- transport -----------------------------------------------------------------
    def deliver(self, envelope: Envelope) -> None:
        """Transport entry point: accept one inbound envelope (never blocks)."""
        self._remote.deliver(envelope)

    @property
    def transport(self) -> Transport | None:
        """The transport connecting this runtime to others, if any."""
        return self._transport

    @property
    def types(self) -> list[str]:
        """Registered agent type names (what this runtime can host)."""
        return list(self._types)

    @property
    def subscriptions(self) -> list[str]:
        """Distinct topic patterns this runtime subscribes to."""
        return list(dict.fromkeys(sub.pattern for sub in self._subs))
