"""The engine's exception hierarchy.

Every error the engine raises on purpose derives from :class:`EngineError`; the
compiled modules in ``engine._native`` raise these same classes (exception classes
live in Python, like ``zmq.error``).
"""

from __future__ import annotations

__all__ = [
    "AllProvidersFailed",
    "AuditError",
    "BudgetExceeded",
    "CorruptFileError",
    "CycleError",
    "DeadlineExceeded",
    "DecodeError",
    "DimensionError",
    "EmbeddingError",
    "EncodeError",
    "EngineError",
    "GateError",
    "InvalidTransition",
    "InvalidVectorError",
    "JobNotFound",
    "LLMError",
    "LeaseLost",
    "MailboxFull",
    "MaxStepsExceeded",
    "MessageTypeConflict",
    "MissingExtraError",
    "NativeFallbackWarning",
    "NativeUnavailable",
    "NotAnAgentError",
    "OrchestrationError",
    "PlanError",
    "PriceUnknown",
    "ProtocolError",
    "ProviderError",
    "QueryCancelled",
    "RecordTooLarge",
    "RegistrationRefused",
    "RemoteError",
    "RoutingError",
    "SchedulerError",
    "SchemaVersionError",
    "ScriptError",
    "StallError",
    "StoreClosed",
    "StoreConflict",
    "StoreError",
    "StoreInputError",
    "StoreNotFound",
    "StoreURLError",
    "StructuredOutputError",
    "ToolError",
    "ToolNotFound",
    "ToolTimeout",
    "ToolValidationError",
    "TraceContextError",
    "UndeliverableError",
    "UnknownIdError",
    "VectorStoreError",
]


# --- Base and the compiled modules


class EngineError(Exception):
    """Base class of every error raised by agent-engine."""


class NativeUnavailable(EngineError, ImportError):
    """A compiled module is missing while ``ENGINE_REQUIRE_NATIVE=1``."""


class MissingExtraError(EngineError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, message: str, *, module: str, extra: str) -> None:
        super().__init__(message, name=module)
        self.module = module
        self.extra = extra


class NativeFallbackWarning(RuntimeWarning):
    """A compiled module is missing and its (much slower) pure-Python twin is used; once per
    module, never under ``ENGINE_NO_EXTENSIONS=1`` (which chooses the twins on purpose)."""


# --- Wire format (engine.messages) and trace context


class DecodeError(EngineError, ValueError):
    """Bytes could not be decoded into a message: too large, truncated, malformed or mistyped."""


class EncodeError(EngineError, TypeError):
    """A value could not be encoded onto the wire."""


class MessageTypeConflict(EngineError, TypeError):
    """Two different message classes share one wire name (see ``Message``'s ``tag=``)."""

    def __init__(self, name: str, classes: list[type]) -> None:
        self.name = name
        self.classes = list(classes)
        where = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in self.classes)
        super().__init__(
            f"message type {name!r} is ambiguous: {where} share it; "
            'give one a distinct wire name with `class X(Message, tag="app.X")`'
        )


class TraceContextError(EngineError, ValueError):
    """A W3C ``traceparent`` value is malformed (the message says which rule it breaks)."""


# --- Routing and scheduling (engine.routing, engine.scheduling)


class RoutingError(EngineError, LookupError):
    """A routing request named an unknown target, or a pattern/topic was malformed."""


class SchedulerError(EngineError):
    """A scheduler request was invalid (unknown task, duplicate id, bad argument)."""


class CycleError(SchedulerError):
    """Adding dependencies would create a cycle; ``cycle`` lists the task ids on it."""

    def __init__(self, cycle: list[int]) -> None:
        self.cycle = list(cycle)
        super().__init__("dependency cycle: " + " -> ".join(map(str, self.cycle)))


# --- Runtime (engine.runtime, engine.agents)


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


class DeadlineExceeded(EngineError, TimeoutError):
    """A request's timeout or deadline passed before its reply arrived."""


class QueryCancelled(EngineError):
    """A query was cancelled or terminated; raised at its next step boundary."""


# --- Tools (engine.tools)


class ToolError(EngineError):
    """Base class of tool errors (unknown tool, invalid arguments, timeout)."""


class ToolNotFound(ToolError, LookupError):
    """No tool with the requested name is registered."""


class ToolValidationError(ToolError, ValueError):
    """Tool arguments do not match the tool's signature; the message names the field."""


class ToolTimeout(ToolError, TimeoutError):
    """A tool call ran longer than its timeout."""


# --- Memory (engine.memory)


class VectorStoreError(EngineError):
    """A vector store, semantic cache or embedder request was invalid."""


class DimensionError(VectorStoreError, ValueError):
    """Vectors do not have the store's dimension (``expected`` vs ``got``)."""

    def __init__(self, expected: int, got: int, what: str = "vectors") -> None:
        self.expected = expected
        self.got = got
        super().__init__(f"{what} have dimension {got}, the store expects {expected}")


class InvalidVectorError(VectorStoreError, ValueError):
    """A vector holds NaN or infinity (``row`` is the first offending row)."""

    def __init__(self, row: int, what: str = "vectors") -> None:
        self.row = row
        super().__init__(f"{what} row {row} holds NaN or infinity")


class UnknownIdError(VectorStoreError, KeyError):
    """Ids that are not in the store were named (``ids`` lists up to the first ten)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = list(ids)
        super().__init__(f"unknown ids: {self.ids[:10]}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class CorruptFileError(VectorStoreError):
    """A saved store could not be read back: truncated, not a store, or checksum mismatch."""


class EmbeddingError(VectorStoreError):
    """An embedder was given bad input or its backend failed (HTTP error, bad response)."""


# --- Mesh (engine.mesh)


class ProtocolError(EngineError, ValueError):
    """A mesh frame broke the wire protocol (bad signature, version, kind, body or MAC)."""


class RegistrationRefused(EngineError):
    """The mesh broker refused this peer's REGISTER for good (role not allowed for its
    key, a name or field over the protocol's limits); ``code`` is the DISCONNECT code."""

    def __init__(self, message: str, code: int = 0) -> None:
        self.code = code
        super().__init__(message)


class NotAnAgentError(EngineError, TypeError):
    """A node was given a class that is not an ``engine.Agent`` subclass to host."""


# --- Observability and tooling (engine.observe, engine.cli)


class AuditError(EngineError):
    """An audit log failed verification or could not be appended to.

    ``line`` is the 1-based line of the first bad record (0 when not about one record).
    """

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class GateError(EngineError):
    """The benchmark gate could not compare (unknown ref, failed build, broken benchmark)."""


# --- State (engine.store)


class StoreError(EngineError):
    """Base class of the state store's errors (``engine.store``)."""


class StoreURLError(StoreError, ValueError):
    """A store URL is malformed or names a scheme no implementation serves."""


class StoreNotFound(StoreError, FileNotFoundError):
    """The store a URL names does not exist, and the caller asked not to create one."""


class SchemaVersionError(StoreError):
    """The store's schema is newer than this code, or older and not migrated."""


class StoreClosed(StoreError):
    """The store was closed (or its writer died); no further calls are accepted."""


class StoreInputError(StoreError, ValueError):
    """An argument to a store method has the wrong type, shape or size (named in the message)."""


class RecordTooLarge(StoreInputError):
    """A value is larger than the store's ``max_value_bytes``."""


class JobNotFound(StoreError, LookupError):
    """A job operation named a job the store does not hold."""


class StoreConflict(StoreError):
    """A compare-and-set or uniqueness check failed; ``current`` is what the store holds."""

    def __init__(self, message: str, current: object = None) -> None:
        self.current = current
        super().__init__(message)


class LeaseLost(StoreConflict):
    """The caller no longer holds the job's lease (it expired and another owner took it)."""


# --- LLM layer (engine.llm)


class LLMError(EngineError):
    """Base class of errors raised by the LLM layer (providers, router, budgets)."""


class ProviderError(LLMError):
    """A model provider failed a call: HTTP status, connection, timeout or a malformed reply.

    ``status`` is the HTTP status (None when no response arrived), ``retryable`` says whether
    the router may try again (429, 5xx, connection errors, timeouts, malformed replies; never
    400/401/403), ``retry_after`` is the server's ``Retry-After`` in seconds when it sent one.
    The message never holds credentials: it names the provider, model and what went wrong.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        timeout: bool = False,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.timeout = timeout
        where = f"{provider}/{model}" if provider or model else "provider"
        super().__init__(f"{where}: {message}")


class AllProvidersFailed(LLMError):
    """Every provider in a route's fallback chain failed or had its breaker open.

    ``errors`` holds ``(provider, error)`` pairs in the order they were tried.
    """

    def __init__(self, kind: str, errors: list[tuple[str, BaseException]]) -> None:
        self.kind = kind
        self.errors = list(errors)
        tried = "; ".join(f"{name}: {exc}" for name, exc in self.errors) or "no provider"
        super().__init__(f"every provider for kind {kind!r} failed ({tried})")


class BudgetExceeded(LLMError):
    """A call would exceed a budget; it was refused before any request was sent.

    ``budget`` is the budget's name, ``limit_kind`` one of ``tokens``/``cost``/``calls``,
    ``limit`` its limit, ``used`` what was used or reserved before, ``estimate`` the call's
    reservation.
    """

    def __init__(
        self, budget: str, limit_kind: str, limit: float, used: float, estimate: float
    ) -> None:
        self.budget = budget
        self.limit_kind = limit_kind
        self.limit = limit
        self.used = used
        self.estimate = estimate
        super().__init__(
            f"budget {budget!r} refused the call: {limit_kind} limit {limit:g}, "
            f"{used:g} used or reserved, call estimate {estimate:g}"
        )


class PriceUnknown(LLMError, LookupError):
    """A cost budget applies but the price table has no entry for the model."""


class StructuredOutputError(LLMError, ValueError):
    """The model's reply did not validate against ``response_format``, even after one repair.

    ``raw`` is the model's last reply text, ``error`` the validation error message.
    """

    def __init__(self, type_name: str, raw: str, error: str) -> None:
        self.raw = raw
        self.error = error
        super().__init__(f"reply does not validate as {type_name}: {error}")


class MaxStepsExceeded(LLMError):
    """A tool-calling loop reached ``max_steps`` while the model still asked for tools.

    ``result`` is the last step's result; its ``transcript`` holds every step.
    """

    def __init__(self, max_steps: int, result: object) -> None:
        self.max_steps = max_steps
        self.result = result
        super().__init__(f"the model still called tools after max_steps={max_steps}")


class ScriptError(LLMError, LookupError):
    """A :class:`~engine.llm.ScriptedProvider` had no rule matching a call."""


# --- Orchestration (engine.orchestration)


class OrchestrationError(EngineError):
    """A job could not run to its answer; the message is the reason it failed."""


class PlanError(OrchestrationError):
    """The model's plan was invalid, also after one repair round; ``errors`` lists why."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors) if errors else [message]
        super().__init__(message)


class StallError(OrchestrationError):
    """A job made no progress (or looped) after its last allowed replan."""
