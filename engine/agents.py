"""Agents, their message handlers and the context a handler runs in.

An :class:`Agent` subclass declares handlers with :func:`handler`; the message class each
handler accepts comes from the annotation of its message parameter. The dispatch table
(message class -> handler) is built once per class when the class is created, so a
delivery is one dict lookup, never a chain of ``isinstance`` checks.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeVar, Union, overload

import msgspec

from engine.errors import DeadlineExceeded
from engine.messages import (
    AgentId,
    Envelope,
    Kind,
    MessageId,
    TopicId,
    encode_payload,
    wire_name,
)

if TYPE_CHECKING:
    from collections import deque

    from engine.runtime._local import Runtime
    from engine.runtime._queries import Query

__all__ = ["Agent", "Context", "Messenger", "Route", "handler"]

F = TypeVar("F", bound=Callable[..., Any])

_HANDLER_ATTR: Final = "__engine_handler__"


class Route:
    """One entry of an agent class's dispatch table (internal, but visible to hooks)."""

    __slots__ = ("concurrent", "fn", "is_async", "name")

    def __init__(self, fn: Callable[..., Any], concurrent: bool) -> None:
        self.fn = fn
        self.name: str = fn.__name__
        self.is_async = inspect.iscoroutinefunction(fn)
        self.concurrent = concurrent

    def __repr__(self) -> str:
        return f"Route({self.name}, concurrent={self.concurrent})"


@overload
def handler(fn: F, /) -> F: ...
@overload
def handler(*, concurrent: bool = False) -> Callable[[F], F]: ...


def handler(fn: F | None = None, /, *, concurrent: bool = False) -> F | Callable[[F], F]:
    """Mark an agent method as the handler for the message class its annotation names.

    ``async def on_ping(self, msg: Ping, ctx: Context) -> Ping`` (``def`` works too and
    skips the coroutine). ``msg: A | B`` handles both. By default an instance handles
    one message at a time (actor semantics); ``@handler(concurrent=True)`` lets this
    handler run while the agent is busy with other messages.
    """

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@handler expects a function, got {type(f).__name__}")
        setattr(f, _HANDLER_ATTR, bool(concurrent))
        return f

    return mark(fn) if fn is not None else mark


def _message_types(cls: type, fn: Callable[..., Any]) -> list[type]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise TypeError(
            f"handler {cls.__name__}.{fn.__name__} must take (self, message, ctx); "
            f"it takes {len(params)} parameter(s)"
        )
    name = params[1].name
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolved forward references and the like
        raise TypeError(
            f"cannot resolve annotations of handler {cls.__name__}.{fn.__name__}: {exc}"
        ) from None
    if name not in hints:
        raise TypeError(
            f"handler {cls.__name__}.{fn.__name__}: parameter {name!r} needs a message-class "
            "annotation (it decides which messages the handler receives)"
        )
    hint = hints[name]
    origin = typing.get_origin(hint)
    members = typing.get_args(hint) if origin in (Union, types.UnionType) else (hint,)
    out: list[type] = []
    for member in members:
        if not isinstance(member, type):
            raise TypeError(
                f"handler {cls.__name__}.{fn.__name__}: {name!r} is annotated {hint!r}; "
                "expected a message class or a union of them"
            )
        out.append(member)
    return out


class Agent:
    """Base class of agents; subclass it and declare :func:`handler` methods.

    The runtime creates instances with the factory given to ``rt.register`` and binds
    ``id`` and ``runtime`` before ``on_start``. ``type_name`` (default: the class name
    lower-cased) is the type other code addresses, e.g. the mesh CLI.
    Subclasses may declare ``__slots__`` to keep idle agents small.
    """

    __slots__ = ("_busy", "_current", "_mb", "_task", "_tick", "_wait", "id", "runtime")

    type_name: ClassVar[str] = "agent"
    _routes: ClassVar[dict[type, Route]] = {}
    _has_start: ClassVar[bool] = False
    _has_stop: ClassVar[bool] = False

    if TYPE_CHECKING:
        id: AgentId
        runtime: Runtime
        _busy: bool
        _mb: deque[Any] | None
        _wait: deque[Any] | None
        _task: Any
        _current: Any
        _tick: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" not in cls.__dict__:
            cls.type_name = cls.__name__.lower()
        elif not isinstance(cls.type_name, str) or not cls.type_name:
            raise TypeError(f"{cls.__name__}.type_name must be a non-empty string")
        routes: dict[type, Route] = {}
        for klass in reversed(cls.__mro__):
            claimed: dict[type, str] = {}
            for attr, fn in vars(klass).items():
                concurrent = getattr(fn, _HANDLER_ATTR, None)
                if concurrent is None:
                    # A plain method overriding a base handler removes that handler.
                    for mtype in [m for m, r in routes.items() if r.name == attr]:
                        del routes[mtype]
                    continue
                for mtype in _message_types(cls, fn):
                    if mtype in claimed:
                        raise TypeError(
                            f"{klass.__name__}: both {claimed[mtype]} and {attr} handle "
                            f"{mtype.__name__}"
                        )
                    claimed[mtype] = attr
                    routes[mtype] = Route(fn, concurrent)
        cls._routes = routes
        cls._has_start = cls.on_start is not Agent.on_start
        cls._has_stop = cls.on_stop is not Agent.on_stop

    @classmethod
    def route_for(cls, message_type: type) -> Route | None:
        """The handler route for ``message_type`` (its base classes count), or None."""
        route = cls._routes.get(message_type)
        if route is None:
            for base in message_type.__mro__[1:]:
                route = cls._routes.get(base)
                if route is not None:
                    cls._routes[message_type] = route  # bounded by the message classes seen
                    break
        return route

    async def on_start(self) -> None:
        """Called once after the instance is created, before its first message."""

    async def on_stop(self) -> None:
        """Called when the instance is evicted or the runtime stops."""

    def __repr__(self) -> str:
        aid = getattr(self, "id", None)
        return f"<{type(self).__name__} {aid}>"


class Messenger(Protocol):
    """What a :class:`Context` needs of the runtime it delivers for (``Runtime`` is one)."""

    @property
    def origin(self) -> str: ...

    async def send(
        self,
        message: Any,
        *,
        to: AgentId,
        timeout: float | None = ...,
        sender: AgentId | None = ...,
        traceparent: str = ...,
    ) -> Any: ...

    async def publish(
        self,
        message: Any,
        *,
        topic: str | TopicId,
        sender: AgentId | None = ...,
        local_only: bool = ...,
        traceparent: str = ...,
    ) -> int: ...

    async def post(
        self, message: Any, *, to: AgentId, sender: AgentId | None = ..., traceparent: str = ...
    ) -> None: ...


class Context(msgspec.Struct, eq=False):
    """What a handler knows about the message it is handling (one per delivery).

    ``message`` is the message being handled, ``sender`` the sending agent (None for
    external callers), ``topic`` is set for published messages, ``message_id`` is the
    envelope id (the ``correlation`` of its reply), ``deadline`` a ``loop.time()`` value
    or 0.0. Use :meth:`send`/:meth:`publish`/:meth:`post` so messages carry this agent as
    their sender, its deadline, trace context and query.
    """

    # PERF: a msgspec Struct is built in C, about half the cost of a __slots__ class with
    # an __init__ (measured with 8 fields, 1M constructions, 2026-11).
    runtime: Messenger
    agent: Agent
    route: Route
    message: Any
    sender: AgentId | None
    topic: TopicId | None
    seq: int
    query: Query | None
    deadline: float = 0.0
    #: W3C trace context of this delivery; tracing middleware may replace it with its
    #: span's, and ``ctx.send``/``ctx.publish`` pass it on (also onto the wire).
    traceparent: str = ""
    # The future of a queued request (None for published/posted messages). A queued
    # delivery is this one object: fewer allocations, less work for the cycle GC.
    _reply: asyncio.Future[Any] | None = None

    kind: ClassVar[str] = "handler"

    @property
    def agent_id(self) -> AgentId:
        return self.agent.id

    @property
    def message_id(self) -> MessageId:
        return MessageId(self.runtime.origin, self.seq)

    def envelope(self, *, with_payload: bool = False) -> Envelope:
        """This delivery's headers as the :class:`~engine.messages.Envelope` a transport
        would carry (in process nothing is encoded; this builds it on demand).

        ``deadline`` becomes UNIX time; ``with_payload`` also encodes the message.
        """
        deadline = 0.0
        if self.deadline:
            deadline = time.time() + (self.deadline - asyncio.get_running_loop().time())
        message = self.message
        return Envelope(
            id=self.message_id,
            kind=Kind.SEND if self.topic is None else Kind.PUBLISH,
            sender=self.sender,
            recipient=self.agent.id,
            topic=self.topic,
            deadline=deadline,
            traceparent=self.traceparent,
            payload_type=wire_name(type(message)),
            payload=encode_payload(message if with_payload else None),
        )

    async def send(self, message: Any, *, to: AgentId, timeout: float | None = None) -> Any:
        """Send from this agent (see :meth:`Runtime.send`).

        Without ``timeout`` the request inherits what is left of this message's deadline.
        """
        if timeout is None and self.deadline:
            timeout = self.deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                raise DeadlineExceeded(
                    f"deadline of {self.route.name} on {self.agent.id} passed before "
                    f"sending {type(message).__name__} to {to}"
                )
        return await self.runtime.send(
            message, to=to, timeout=timeout, sender=self.agent.id, traceparent=self.traceparent
        )

    async def publish(self, message: Any, *, topic: str | TopicId) -> None:
        """Publish from this agent (see :meth:`Runtime.publish`)."""
        await self.runtime.publish(
            message, topic=topic, sender=self.agent.id, traceparent=self.traceparent
        )

    async def post(self, message: Any, *, to: AgentId) -> None:
        """One-way send from this agent (see :meth:`Runtime.post`)."""
        await self.runtime.post(message, to=to, sender=self.agent.id, traceparent=self.traceparent)

    def __repr__(self) -> str:
        return f"<Context {self.route.name} on {self.agent.id} seq={self.seq}>"
