"""The agent classes a node hosts: ``pkg.mod:Class,...`` specs, type names, the Agent check.

A node runs :class:`engine.Agent` subclasses only (on a :class:`engine.Runtime`, as in
process); anything else is refused up front with :class:`~engine.errors.NotAnAgentError`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from engine.agents import Agent
from engine.errors import EngineError, NotAnAgentError

__all__ = ["agent_classes", "load_agent_classes", "type_name_of"]


def type_name_of(cls: type) -> str:
    """``cls.type_name`` if set, else the class name lower-cased."""
    name = getattr(cls, "type_name", None)
    return name if isinstance(name, str) and name else cls.__name__.lower()


def agent_classes(classes: Mapping[str, object]) -> dict[str, type[Agent]]:
    """``classes`` checked: every value an ``engine.Agent`` subclass, every key a type name."""
    out: dict[str, type[Agent]] = {}
    for type_name, cls in classes.items():
        if not isinstance(type_name, str) or not type_name:
            raise EngineError(f"agent type names must be non-empty str, got {type_name!r}")
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            what = f"{cls.__module__}:{cls.__qualname__}" if isinstance(cls, type) else repr(cls)
            raise NotAnAgentError(
                f"{what} (agent type {type_name!r}) must subclass engine.Agent to run on a node"
            )
        out[type_name] = cls
    if not out:
        raise EngineError("no agent classes given")
    return out


def load_agent_classes(spec: str) -> dict[str, type[Agent]]:
    """Parse ``pkg.mod:Class[,type=pkg.mod:Other,...]`` into ``{type_name: class}``.

    Raises :class:`EngineError` for a bad spec or an import that fails, and
    :class:`NotAnAgentError` for a class that is not an ``engine.Agent`` subclass.
    """
    out: dict[str, object] = {}
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
            raise NotAnAgentError(f"{target!r} is not a class: it must subclass engine.Agent")
        out[explicit or type_name_of(cls)] = cls
    return agent_classes(out)
