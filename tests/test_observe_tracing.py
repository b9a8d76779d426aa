"""W3C traceparent helpers and OpenTelemetry spans (a tracer's own provider, built from
``exporters=``; the application's provider is covered by test_observe_otel_app.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engine.errors import TraceContextError
from engine.observe.tracing import (
    TraceContext,
    Tracer,
    child_traceparent,
    llm_attributes,
    make_traceparent,
    parse_traceparent,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_spec_example() -> None:
    ctx = parse_traceparent(VALID)
    assert ctx == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert ctx.sampled and str(ctx) == VALID


def test_future_version_may_append_fields() -> None:
    ctx = parse_traceparent("cc-" + VALID[3:] + "-what-the-future-holds")
    assert ctx.span_id == "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "malformed"),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "malformed"),
        ("ff" + VALID[2:], "version ff"),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "trace-id is all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", "parent-id is all zeros"),
        (VALID + "-extra", "version 00 has extra fields"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "malformed"),
        ("x" * 600, "too long"),
    ],
)
def test_parse_rejects(value: str, why: str) -> None:
    with pytest.raises(TraceContextError, match=why):
        parse_traceparent(value)


def test_parse_rejects_non_str() -> None:
    with pytest.raises(TraceContextError, match="must be a str"):
        parse_traceparent(b"00-..")  # type: ignore[arg-type]


@given(st.booleans())
def test_make_and_child_roundtrip(sampled: bool) -> None:
    root = make_traceparent(sampled)
    ctx = parse_traceparent(root)
    assert ctx.sampled is sampled
    child = parse_traceparent(child_traceparent(root))
    assert child.trace_id == ctx.trace_id and child.span_id != ctx.span_id
    assert child.flags == ctx.flags


def test_child_of_empty_starts_a_trace() -> None:
    assert parse_traceparent(child_traceparent("")).sampled


def tracer() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracer("test", exporters=[exporter]), exporter


def test_spans_nest_and_propagate_via_traceparent() -> None:
    t, exporter = tracer()
    with t.span("task", kind="task") as task:
        wire = task.traceparent  # what goes into Envelope.traceparent
        with t.span("hop", wire, kind="hop") as hop, t.span("handle", hop.traceparent):
            pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"task", "hop", "handle"}
    trace_ids = {s.context.trace_id for s in spans.values()}
    assert len(trace_ids) == 1
    assert spans["task"].parent is None
    assert spans["hop"].parent.span_id == spans["task"].context.span_id
    assert spans["handle"].parent.span_id == spans["hop"].context.span_id
    assert spans["hop"].attributes["engine.span_kind"] == "hop"


def test_continues_a_remote_trace() -> None:
    t, exporter = tracer()
    with t.span("handler", VALID) as s:
        assert s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    (span,) = exporter.get_finished_spans()
    assert span.parent.span_id == int("00f067aa0ba902b7", 16) and span.parent.is_remote


def test_exception_recorded_and_reraised() -> None:
    t, exporter = tracer()
    with pytest.raises(KeyError), t.span("tool", kind="tool"):
        raise KeyError("boom")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.events[0].name == "exception"


def test_llm_span_has_gen_ai_attributes() -> None:
    t, exporter = tracer()
    with t.span("chat", kind="llm", attributes=llm_attributes("openai", "gpt-x", prompt_tokens=3)):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes["gen_ai.request.model"] == "gpt-x"
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert "gen_ai.system" not in span.attributes  # deprecated
    assert span.attributes["gen_ai.usage.input_tokens"] == 3


def test_own_provider_never_touches_the_global_one() -> None:
    before = trace.get_tracer_provider()
    t, _ = tracer()
    with t.span("x"):
        pass
    assert trace.get_tracer_provider() is before
    assert t.provider is not before


def test_disabled_tracer_still_propagates() -> None:
    t = Tracer(enabled=False)
    with t.span("h", VALID) as s:
        ctx = parse_traceparent(s.traceparent)
        s.set_attribute("a", 1)
    assert t.provider is None
    assert ctx.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and ctx.span_id != "00f067aa0ba902b7"


def test_bad_kind_and_bad_parent() -> None:
    t, _ = tracer()
    with pytest.raises(ValueError, match="span kind"), t.span("x", kind="weird"):
        pass
    with pytest.raises(TraceContextError), t.span("x", "garbage"):
        pass


def test_current_traceparent_follows_open_spans() -> None:
    from engine.observe import current_traceparent

    for t in (tracer()[0], Tracer(enabled=False)):
        assert current_traceparent() == ""
        with t.span("outer") as outer:
            assert current_traceparent() == outer.traceparent
            with t.span("inner", current_traceparent()) as inner:
                assert current_traceparent() == inner.traceparent
                assert parse_traceparent(inner.traceparent).trace_id == outer.trace_id
            assert current_traceparent() == outer.traceparent
        assert current_traceparent() == ""


def test_span_may_end_in_another_context() -> None:
    """Like a coroutine whose first step ran in its caller's context, then resumed in a task."""
    import contextvars

    from engine.observe import current_traceparent

    for t in (tracer()[0], Tracer(enabled=False)):
        cm = t.span("eager")
        started = contextvars.copy_context()
        span = started.run(cm.__enter__)
        resumed = started.copy()
        assert resumed.run(current_traceparent) == span.traceparent
        resumed.run(cm.__exit__, None, None, None)  # must not raise
        assert resumed.run(current_traceparent) == ""


def test_span_without_parent_nests_under_the_current_span() -> None:
    t, exporter = tracer()
    with t.span("first"), t.span("second"):  # no parent given: the open span is the parent
        pass
    first, second = sorted(exporter.get_finished_spans(), key=lambda s: s.name)
    assert first.parent is None
    assert second.parent.span_id == first.context.span_id
    assert first.context.trace_id == second.context.trace_id


def test_pure_span_nests_under_the_current_span() -> None:
    t = Tracer(enabled=False)
    with t.span("first") as first, t.span("second") as second:
        pass
    assert second.trace_id == first.trace_id and second.traceparent != first.traceparent


def test_global_provider_is_followed_when_none_is_passed() -> None:
    """No provider given: the global one; with the default (none set) only propagation."""
    t = Tracer()
    assert t.provider is None
    with t.span("x", VALID) as s:  # the API's no-op provider records nothing
        assert s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert s.context.span_id != "00f067aa0ba902b7"
