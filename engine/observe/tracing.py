"""W3C trace context for envelopes, and spans through OpenTelemetry when it is installed.

The ``traceparent`` helpers are pure Python and always available: every envelope carries
one (``Envelope.traceparent``), each hop makes a child of the one it received.

:class:`Tracer` opens spans (task, subtask, handler, tool call, LLM call, message hop). With
the ``otel`` extra installed it records them on the engine's **own** ``TracerProvider``
(never the global one) and exports only to the exporters you pass: nothing is sent anywhere
unless you configure it. Without OpenTelemetry the same calls still produce correct child
``traceparent`` values, so propagation never depends on the extra.
"""

from __future__ import annotations

import contextvars
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from engine.errors import TraceContextError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "HAS_OTEL",
    "Span",
    "TraceContext",
    "Tracer",
    "child_traceparent",
    "current_traceparent",
    "llm_attributes",
    "make_traceparent",
    "parse_traceparent",
]


def _has_otel() -> bool:
    try:  # the optional extra; found without importing it (importing costs ~40 ms)
        return importlib.util.find_spec("opentelemetry.sdk") is not None
    except ModuleNotFoundError:  # pragma: no cover - exercised where the extra is absent
        return False


HAS_OTEL: Final[bool] = _has_otel()

_TP: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
SAMPLED: Final = 0x01


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One parsed ``traceparent``: 32-hex trace id, 16-hex span (parent) id, flags byte."""

    trace_id: str
    span_id: str
    flags: int = SAMPLED

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def child(self) -> TraceContext:
        """Same trace, a fresh span id: the context of a span whose parent is this one."""
        return TraceContext(self.trace_id, _new_span_id(), self.flags)

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"


def _new_span_id() -> str:
    while True:
        s = os.urandom(8).hex()
        if s != _ZERO_SPAN:
            return s


def _new_trace_id() -> str:
    while True:
        t = os.urandom(16).hex()
        if t != _ZERO_TRACE:
            return t


def parse_traceparent(value: str) -> TraceContext:
    """Parse a W3C ``traceparent`` header; :class:`TraceContextError` names what is wrong.

    Follows the spec's rules: lowercase hex, version ``ff`` is invalid, version ``00`` has
    exactly four fields, later versions may append fields (ignored), all-zero ids are invalid.
    """
    if not isinstance(value, str):
        raise TraceContextError(f"traceparent must be a str, got {type(value).__name__}")
    if len(value) > 512:
        raise TraceContextError(f"traceparent is too long ({len(value)} chars)")
    m = _TP.fullmatch(value.strip(" \t"))
    if m is None:
        raise TraceContextError(f"malformed traceparent {value!r}")
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff":
        raise TraceContextError("traceparent version ff is invalid")
    if version == "00" and rest:
        raise TraceContextError(f"traceparent version 00 has extra fields: {value!r}")
    if rest and not rest.startswith("-"):
        raise TraceContextError(f"malformed traceparent {value!r}")
    if trace_id == _ZERO_TRACE:
        raise TraceContextError("traceparent trace-id is all zeros")
    if span_id == _ZERO_SPAN:
        raise TraceContextError("traceparent parent-id is all zeros")
    return TraceContext(trace_id, span_id, int(flags, 16))


def make_traceparent(sampled: bool = True) -> str:
    """A new root ``traceparent`` (fresh trace id and span id)."""
    return str(TraceContext(_new_trace_id(), _new_span_id(), SAMPLED if sampled else 0))


def child_traceparent(parent: str) -> str:
    """A child of ``parent`` (same trace, new span id); a new root when ``parent`` is empty."""
    if not parent:
        return make_traceparent()
    return str(parse_traceparent(parent).child())


#: The ``traceparent`` of the innermost span open in this context ("" outside any span).
#: Code that sends an envelope stamps it: ``Envelope(..., traceparent=current_traceparent())``.
_current: contextvars.ContextVar[str] = contextvars.ContextVar("engine_traceparent", default="")


def current_traceparent() -> str:
    """The ``traceparent`` to put into envelopes sent from here ("" when no span is open)."""
    return _current.get()


def _restore(token: contextvars.Token[str]) -> None:
    try:
        _current.reset(token)
    except ValueError:
        # The span ended in another context than it began in (a coroutine whose first step
        # ran in its caller's context, then resumed in a task): put the old value back here.
        old = token.old_value
        _current.set("" if old is contextvars.Token.MISSING else old)


class Span:
    """A span in progress: its ``traceparent`` goes into envelopes sent while it is open."""

    __slots__ = ("_otel", "context", "name")

    def __init__(self, name: str, context: TraceContext, otel: Any = None) -> None:
        self.name = name
        self.context = context
        self._otel = otel

    @property
    def traceparent(self) -> str:
        return str(self.context)

    @property
    def trace_id(self) -> str:
        return self.context.trace_id

    def set_attribute(self, key: str, value: str | int | float | bool) -> None:
        if self._otel is not None:
            self._otel.set_attribute(key, value)

    def record_exception(self, exc: BaseException) -> None:
        if self._otel is not None:
            from opentelemetry.trace import Status, StatusCode

            self._otel.record_exception(exc)
            self._otel.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


#: Span kinds the engine opens, and the OpenTelemetry kind each maps to.
SPAN_KINDS: Final = ("task", "subtask", "handler", "tool", "llm", "hop")


class Tracer:
    """Opens spans parented on a ``traceparent``; OpenTelemetry-backed when available.

    ``exporters`` are OpenTelemetry ``SpanExporter`` objects (e.g. an in-memory one in tests,
    OTLP in production); each gets a ``SimpleSpanProcessor`` unless ``batch=True``.
    ``enabled=False`` (or no OpenTelemetry) keeps only the pure-Python context propagation.
    """

    def __init__(
        self,
        service_name: str = "agent-engine",
        *,
        exporters: Sequence[SpanExporter] = (),
        batch: bool = False,
        enabled: bool = True,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.service_name = service_name
        self.provider: TracerProvider | None = None
        self._tracer: Any = None
        if enabled and HAS_OTEL:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

            resource = Resource.create({"service.name": service_name, **(attributes or {})})
            self.provider = TracerProvider(resource=resource)  # ours; never set globally
            for exporter in exporters:
                proc = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
                self.provider.add_span_processor(proc)
            self._tracer = self.provider.get_tracer("engine")

    @contextmanager
    def span(
        self,
        name: str,
        parent: str | TraceContext | None = None,
        *,
        kind: str = "handler",
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[Span]:
        """Open a span as a child of ``parent`` (a traceparent; ``None``/``""`` starts a trace).

        An exception inside the block is recorded on the span and re-raised.
        """
        if kind not in SPAN_KINDS:
            raise ValueError(f"span kind must be one of {SPAN_KINDS}, got {kind!r}")
        if isinstance(parent, str):
            parent_ctx = parse_traceparent(parent) if parent else None
        else:
            parent_ctx = parent
        if self._tracer is None:
            ctx = parent_ctx.child() if parent_ctx else parse_traceparent(make_traceparent())
            token = _current.set(str(ctx))
            try:
                yield Span(name, ctx)
            finally:
                _restore(token)
            return
        from opentelemetry import trace
        from opentelemetry.context import Context

        otel_parent = Context()  # no parent given: a new trace, whatever is ambient
        if parent_ctx is not None:
            remote = trace.SpanContext(
                int(parent_ctx.trace_id, 16),
                int(parent_ctx.span_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(parent_ctx.flags),
            )
            otel_parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        attrs: dict[str, Any] = {"engine.span_kind": kind, **(attributes or {})}
        with self._tracer.start_as_current_span(
            name,
            context=otel_parent,
            kind=_otel_kind(kind),
            attributes=attrs,
            record_exception=True,
            set_status_on_exception=True,
        ) as otel_span:
            sc = otel_span.get_span_context()
            ctx = TraceContext(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags))
            token = _current.set(str(ctx))
            try:
                yield Span(name, ctx, otel_span)
            finally:
                _restore(token)

    def shutdown(self) -> None:
        """Flush and close the exporters."""
        if self.provider is not None:
            self.provider.shutdown()


def _otel_kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {
        "hop": SpanKind.PRODUCER,
        "llm": SpanKind.CLIENT,
        "tool": SpanKind.INTERNAL,
    }.get(kind, SpanKind.INTERNAL)


def llm_attributes(
    system: str,
    model: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    operation: str = "chat",
) -> dict[str, str | int]:
    """OpenTelemetry GenAI semantic-convention attributes (``gen_ai.*``) for an LLM span."""
    return {
        "gen_ai.provider.name": system,  # semconv 1.37+: gen_ai.system is deprecated
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": prompt_tokens,
        "gen_ai.usage.output_tokens": completion_tokens,
    }
