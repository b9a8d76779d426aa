"""The engine's exception hierarchy.

Every error the engine raises on purpose derives from :class:`EngineError`; the
compiled modules in ``engine._native`` raise these same classes (exception classes
live in Python, like ``zmq.error``).
"""

from __future__ import annotations

__all__ = [
    "CycleError",
    "DeadlineExceeded",
    "DecodeError",
    "EncodeError",
    "EngineError",
    "InvalidTransition",
    "MailboxFull",
    "NativeUnavailable",
    "ProtocolError",
    "QueryCancelled",
    "RemoteError",
    "RoutingError",
    "SchedulerError",
    "ToolError",
    "ToolNotFound",
    "ToolTimeout",
    "ToolValidationError",
    "UndeliverableError",
]


class EngineError(Exception):
    """Base class of every error raised by agent-engine."""


class NativeUnavailable(EngineError, ImportError):
    """A compiled module is missing while ``ENGINE_REQUIRE_NATIVE=1``."""


class DecodeError(EngineError, ValueError):
    """Bytes could not be decoded into a message: too large, truncated, malformed or mistyped."""


class EncodeError(EngineError, TypeError):
    """A value could not be encoded onto the wire."""


class RoutingError(EngineError, LookupError):
    """A routing request named an unknown target, or a pattern/topic was malformed."""


class SchedulerError(EngineError):
    """A scheduler request was invalid (unknown task, duplicate id, bad argument)."""


class CycleError(SchedulerError):
    """Adding dependencies would create a cycle; ``cycle`` lists the task ids on it."""

    def __init__(self, cycle: list[int]) -> None:
        self.cycle = list(cycle)
        super().__init__("dependency cycle: " + " -> ".join(map(str, self.cycle)))


class UndeliverableError(EngineError):
    """No agent can receive the message (unknown agent type, no subscriber, node gone)."""


class MailboxFull(EngineError):
    """An agent's bounded mailbox is full and its policy is ``reject``."""


class RemoteError(EngineError):
    """A handler raised; carries the remote exception's type name and message."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


class InvalidTransition(EngineError):
    """A state machine was asked for a transition its current state does not allow."""


class ProtocolError(EngineError, ValueError):
    """A mesh frame broke the wire protocol (bad signature, version, kind, body or MAC)."""


class DeadlineExceeded(EngineError, TimeoutError):
    """A request's timeout or deadline passed before its reply arrived."""


class QueryCancelled(EngineError):
    """A query was cancelled or terminated; raised at its next step boundary."""


class ToolError(EngineError):
    """Base class of tool errors (unknown tool, invalid arguments, timeout)."""


class ToolNotFound(ToolError, LookupError):
    """No tool with the requested name is registered."""


class ToolValidationError(ToolError, ValueError):
    """Tool arguments do not match the tool's signature; the message names the field."""


class ToolTimeout(ToolError, TimeoutError):
    """A tool call ran longer than its timeout."""
