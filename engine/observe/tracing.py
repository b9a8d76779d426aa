"""W3C trace context for envelopes, and spans through the OpenTelemetry API when installed.

The ``traceparent`` helpers are pure Python and always available: every envelope carries
one (``Envelope.traceparent``), each hop makes a child of the one it received.

:class:`Tracer` opens spans (task, subtask, handler, tool call, LLM call, message hop) the
way a library should: through the OpenTelemetry **API** only (the ``otel`` extra), on the
application's global tracer provider or on the one passed in (``tracer_provider=``). So the
engine's spans land in the application's own traces and exporters (Logfire, Langfuse,
Datadog, OTLP, auto-instrumentation), nested under whatever span is current. The engine
never sets the global provider, never configures an exporter and never sends anything
anywhere by itself. Without OpenTelemetry the same calls still produce correct child
``traceparent`` values, so propagation never depends on the extra.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from engine.errors import TraceContextError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import TracerProvider

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


@functools.cache
def _has_otel() -> bool:
    try:  # the optional extra (the API); found without importing it
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ModuleNotFoundError:  # pragma: no cover - exercised where the extra is absent
        return False


if TYPE_CHECKING:
    #: The ``otel`` extra is installed (looked up on first access: the look-up imports the
    #: ``opentelemetry`` namespace package, which a runtime that never traces need not load).
    HAS_OTEL: bool


def __getattr__(name: str) -> Any:
    if name == "HAS_OTEL":
        return _has_otel()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """The ``traceparent`` to put into envelopes sent from here: the innermost engine span,
    else the application's current OpenTelemetry span, else "" (no span is open)."""
    tp = _current.get()
    if tp:
        return tp
    otel = sys.modules.get("opentelemetry.trace")  # loaded only if the application uses it
    if otel is None:
        return ""
    sc = otel.get_current_span().get_span_context()
    if not sc.is_valid:
        return ""
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags) & 0xFF:02x}"


def _restore(token: contextvars.Token[str], otel: tuple[object, Any] | None = None) -> None:
    """End a span's hold on the current context (ours, and OpenTelemetry's when given as
    ``(token, context before)``)."""
    try:
        _current.reset(token)
        same = True
    except ValueError:
        # The span ended in another context than it began in (a coroutine whose first step
        # ran in its caller's context, then resumed in a task): put the old value back here.
        same = False
        old = token.old_value
        _current.set("" if old is contextvars.Token.MISSING else old)
    if otel is not None:
        from opentelemetry import context as otel_context

        otel_token, before = otel
        if same:
            otel_context.detach(otel_token)  # type: ignore[arg-type]
        else:  # detach would fail (and log): set the previous context back, here
            otel_context.attach(before)


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
    """Opens spans parented on a ``traceparent`` (or the current span); OpenTelemetry-backed.

    Which provider records the spans:

    - ``tracer_provider=`` given: that one (an application's SDK provider, a test's);
    - ``exporters=`` given: a provider of the tracer's own, built with the OpenTelemetry
      **SDK** and exporting only to those (``SimpleSpanProcessor`` each, or batched with
      ``batch=True``); for scripts and tests that have no provider of their own;
    - neither: the application's global provider (``opentelemetry.trace.get_tracer``),
      followed even when the application sets it after this tracer was made. With no
      provider set, OpenTelemetry records nothing and only the propagation remains.

    ``enabled=False`` (or no ``opentelemetry-api`` installed) keeps only the pure-Python
    context propagation.
    """

    def __init__(
        self,
        service_name: str = "agent-engine",
        *,
        tracer_provider: TracerProvider | None = None,
        exporters: Sequence[SpanExporter] = (),
        batch: bool = False,
        enabled: bool = True,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.service_name = service_name
        self.provider: TracerProvider | None = None
        self._own = False  # the provider is ours to shut down (built from ``exporters``)
        self._tracer: Any = None
        if not (enabled and _has_otel()):
            return
        from opentelemetry import trace

        from engine import __version__

        if tracer_provider is None and exporters:
            tracer_provider = _own_provider(service_name, exporters, batch, attributes)
            self._own = True
        self.provider = tracer_provider
        if tracer_provider is not None:
            self._tracer = tracer_provider.get_tracer("engine", __version__)
        else:  # a proxy: follows the global provider, also when it is set later
            self._tracer = trace.get_tracer("engine", __version__)

    @contextmanager
    def span(
        self,
        name: str,
        parent: str | TraceContext | None = None,
        *,
        kind: str = "handler",
        attributes: Mapping[str, str | int | float | bool] | None = None,
    ) -> Iterator[Span]:
        """Open a span as a child of ``parent`` (a traceparent, e.g. an envelope's); with no
        parent (``None`` or ``""``) as a child of the current span, the engine's or the
        application's, or as the root of a new trace when none is open.

        An exception inside the block is recorded on the span and re-raised.
        """
        if kind not in SPAN_KINDS:
            raise ValueError(f"span kind must be one of {SPAN_KINDS}, got {kind!r}")
        if isinstance(parent, str):
            parent_ctx = parse_traceparent(parent) if parent else None
        else:
            parent_ctx = parent
        if self._tracer is None:
            with _pure_span(name, parent_ctx or _ambient()) as span:
                yield span
            return
        from opentelemetry import trace

        if parent_ctx is None and _current.get():
            ours = parse_traceparent(_current.get())
            if ours.trace_id != f"{trace.get_current_span().get_span_context().trace_id:032x}":
                parent_ctx = ours  # an engine span OpenTelemetry does not hold (pure Python)
        otel_parent = None  # the current context: nests under the application's span
        if parent_ctx is not None:
            remote = trace.SpanContext(
                int(parent_ctx.trace_id, 16),
                int(parent_ctx.span_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(parent_ctx.flags),
            )
            otel_parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        attrs: dict[str, Any] = {"engine.span_kind": kind, **(attributes or {})}
        otel_span = self._tracer.start_span(
            name, context=otel_parent, kind=_otel_kind(kind), attributes=attrs
        )
        sc = otel_span.get_span_context()
        above = trace.get_current_span(otel_parent).get_span_context()
        if not sc.is_valid or sc.span_id == above.span_id:
            # no provider: the API's no-op tracer hands back the parent; propagate in Python
            with _pure_span(name, parent_ctx or _ambient()) as span:
                yield span
            return
        from opentelemetry import context as otel_context

        before = otel_context.get_current()
        otel_token = otel_context.attach(trace.set_span_in_context(otel_span))
        ctx = TraceContext(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags))
        token = _current.set(str(ctx))
        span = Span(name, ctx, otel_span)
        try:
            yield span
        except Exception as exc:  # not cancellation or exit: those are no errors
            span.record_exception(exc)
            raise
        finally:
            _restore(token, (otel_token, before))
            otel_span.end()

    def shutdown(self) -> None:
        """Flush and close the exporters of a provider this tracer built (``exporters=``);
        a provider passed in or the global one belongs to the application."""
        if self._own and self.provider is not None:
            self.provider.shutdown()  # type: ignore[attr-defined]


def _ambient() -> TraceContext | None:
    tp = current_traceparent()
    return parse_traceparent(tp) if tp else None


@contextmanager
def _pure_span(name: str, parent: TraceContext | None) -> Iterator[Span]:
    ctx = parent.child() if parent else parse_traceparent(make_traceparent())
    token = _current.set(str(ctx))
    try:
        yield Span(name, ctx)
    finally:
        _restore(token)


def _own_provider(
    service_name: str,
    exporters: Sequence[SpanExporter],
    batch: bool,
    attributes: Mapping[str, str] | None,
) -> TracerProvider:
    """A provider with the OpenTelemetry SDK (not an extra: the engine needs only the API)."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ModuleNotFoundError as exc:
        raise ImportError(
            "Tracer(exporters=...) builds its own provider with the OpenTelemetry SDK: "
            "pip install opentelemetry-sdk, or pass your application's tracer_provider="
        ) from exc
    resource = Resource.create({"service.name": service_name, **(attributes or {})})
    provider = SdkProvider(resource=resource)  # never set globally
    for exporter in exporters:
        proc = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        provider.add_span_processor(proc)
    return provider


def _otel_kind(kind: str) -> Any:
    from opentelemetry.trace import SpanKind

    return {
        "hop": SpanKind.PRODUCER,
        "llm": SpanKind.CLIENT,
        "tool": SpanKind.INTERNAL,
    }.get(kind, SpanKind.INTERNAL)


def llm_attributes(
    provider: str,
    model: str,
    *,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    operation: str = "chat",
) -> dict[str, str | int]:
    """OpenTelemetry GenAI semantic-convention attributes (``gen_ai.*``) for an LLM span:
    ``gen_ai.provider.name`` (e.g. ``"openai"``), not the deprecated ``gen_ai.system``."""
    return {
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": prompt_tokens,
        "gen_ai.usage.output_tokens": completion_tokens,
    }
