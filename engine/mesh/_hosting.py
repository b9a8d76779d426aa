"""Hosting agent classes on a node: instances per ``AgentId``, handler dispatch, replies.

A handler is any ``async def`` method whose first parameter is annotated with a
``Message`` subclass (or a union of them) — the runtime's ``@handler`` methods qualify.
It is called as ``handler(message, ctx)`` (or ``handler(message)``). One message at a
time per instance (actor semantics). A class may list topic patterns it receives in a
``topics`` class attribute; a published message then goes to ``AgentId(type, source)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import types
import typing
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.errors import DecodeError, EngineError, RoutingError
from engine.mesh.peer import error_reply
from engine.messages import (
    AgentId,
    Envelope,
    Kind,
    Message,
    MessageIds,
    decode_payload,
    wire_name,
)
from engine.routing import Router

__all__ = ["AgentHost", "MeshContext", "load_agent_classes", "type_name_of"]


@dataclass(frozen=True, slots=True)
class MeshContext:
    """Passed to handlers run by a node: who is running and what was delivered."""

    agent_id: AgentId
    envelope: Envelope

    @property
    def sender(self) -> AgentId | None:
        return self.envelope.sender

    @property
    def attempt(self) -> int:
        return self.envelope.attempt


def type_name_of(cls: type) -> str:
    """``cls.type_name`` if set, else the class name lower-cased."""
    name = getattr(cls, "type_name", None)
    return name if isinstance(name, str) and name else cls.__name__.lower()


def load_agent_classes(spec: str) -> dict[str, type]:
    """Parse ``pkg.mod:Class[,type=pkg.mod:Other,...]`` into ``{type_name: class}``."""
    out: dict[str, type] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        explicit, _, target = item.rpartition("=")
        module_name, sep, attr = target.partition(":")
        if not sep or not module_name or not attr:
            raise EngineError(f"bad agent spec {item!r}: expected pkg.module:AgentClass")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # missing, or its import fails: whatever it raises
            raise EngineError(
                f"cannot import {module_name!r} for {target!r}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise EngineError(f"cannot load agent class {target!r}: no {attr!r} in it") from None
        if not isinstance(cls, type):
            raise EngineError(f"{target!r} is not a class")
        out[explicit or type_name_of(cls)] = cls
    if not out:
        raise EngineError("no agent classes given")
    return out


class _Handlers:
    """Dispatch table of one class: payload type name -> (method name, message class)."""

    def __init__(self, cls: type) -> None:
        self.table: dict[str, tuple[str, Any, int]] = {}
        for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction):
            if name.startswith("__"):
                continue
            params = list(inspect.signature(fn).parameters.values())[1:]
            if not params:
                continue
            try:
                hints = typing.get_type_hints(fn)
            except Exception:  # unresolvable annotations: not a handler we can type
                continue
            ann = hints.get(params[0].name)
            for msg_cls in _message_classes(ann):
                self.table[wire_name(msg_cls)] = (name, msg_cls, len(params))
        if not self.table:
            raise EngineError(f"{cls.__qualname__} has no async handler taking a Message")


def _message_classes(ann: Any) -> list[type]:
    if isinstance(ann, type) and issubclass(ann, Message):
        return [ann]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(ann) for c in _message_classes(a)]
    return []


class AgentHost:
    """Runs agent classes for a node; implements the peer's ``Host`` protocol."""

    #: Handlers may start outside a task (the peer runs them eagerly; see MeshPeer._start).
    eager = True

    def __init__(self, classes: dict[str, type], *, max_instances: int = 100_000) -> None:
        self._classes = dict(classes)
        self._handlers = {t: _Handlers(c) for t, c in classes.items()}
        self._instances: OrderedDict[AgentId, tuple[Any, asyncio.Lock]] = OrderedDict()
        self._max = max_instances
        self._ids = MessageIds()
        self._router = Router()
        self._sub_types: list[str] = []
        self._patterns: list[str] = []
        for t, cls in classes.items():
            for pattern in getattr(cls, "topics", ()) or ():
                self._router.subscribe(pattern, subscriber=len(self._sub_types))
                self._sub_types.append(t)
                self._patterns.append(pattern)

    @property
    def types(self) -> Sequence[str]:
        return list(self._classes)

    @property
    def subscriptions(self) -> Sequence[str]:
        return list(dict.fromkeys(self._patterns))

    def _instance(self, aid: AgentId) -> tuple[Any, asyncio.Lock]:
        entry = self._instances.get(aid)
        if entry is None:
            cls = self._classes[aid.type]
            agent = cls()
            with contextlib.suppress(AttributeError, TypeError):
                agent.id = aid
            entry = self._instances[aid] = (agent, asyncio.Lock())
            if len(self._instances) > self._max:
                self._instances.popitem(last=False)
        return entry

    async def handle(self, envelope: Envelope) -> Envelope | None:
        if envelope.kind is Kind.PUBLISH and envelope.topic is not None:
            topic = envelope.topic
            try:
                subs = self._router.match(topic.type)
            except RoutingError:
                return None
            for t in dict.fromkeys(self._sub_types[s] for s in subs):
                await self._run(AgentId(t, topic.source), envelope)
            return None
        recipient = envelope.recipient
        if recipient is None or recipient.type not in self._classes:
            exc = EngineError(f"this node does not host {recipient}")
            return error_reply(envelope, exc, self._ids.next())
        return await self._run(recipient, envelope)

    async def _run(self, aid: AgentId, envelope: Envelope) -> Envelope | None:
        try:
            name, msg_cls, nparams = self._handlers[aid.type].table[envelope.payload_type]
        except KeyError:
            exc: Exception = EngineError(
                f"agent type {aid.type!r} has no handler for {envelope.payload_type!r}"
            )
            return error_reply(envelope, exc, self._ids.next())
        try:
            message = decode_payload(envelope.payload, msg_cls)
        except DecodeError as exc:
            return error_reply(envelope, exc, self._ids.next())
        agent, lock = self._instance(AgentId(aid.type, aid.key if aid.key != "*" else "default"))
        method: Callable[..., Any] = getattr(agent, name)
        try:
            async with lock:
                if nparams >= 2:
                    result = await method(message, MeshContext(aid, envelope))
                else:
                    result = await method(message)
        except Exception as exc:
            return error_reply(envelope, exc, self._ids.next())
        if envelope.kind is not Kind.SEND:
            return None
        payload = msgspec.Raw(msgspec.msgpack.encode(result))
        return Envelope(
            self._ids.next(),
            Kind.REPLY,
            sender=aid,
            recipient=envelope.sender,
            correlation=envelope.id,
            traceparent=envelope.traceparent,
            payload_type=wire_name(type(result)) if result is not None else "",
            payload=payload,
        )
