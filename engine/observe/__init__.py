"""Observability: metrics, tracing, structured logs, the audit log and the sampling profiler.

Names load their module on first use (``import engine.observe.tracing`` for a traceparent
does not import prometheus-client, and ``Metrics`` does not import OpenTelemetry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine._lazy import lazy

if TYPE_CHECKING:
    from engine.observe.audit import AuditLog
    from engine.observe.logs import RedactingFilter, configure_logging, log_context
    from engine.observe.metrics import Metrics, default_metrics
    from engine.observe.sampler import Profile, Sampler, profile_for
    from engine.observe.server import ObserveServer
    from engine.observe.tracing import (
        Tracer,
        current_traceparent,
        make_traceparent,
        parse_traceparent,
    )

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "AuditLog": "engine.observe.audit",
    "RedactingFilter": "engine.observe.logs",
    "configure_logging": "engine.observe.logs",
    "log_context": "engine.observe.logs",
    "Metrics": "engine.observe.metrics",
    "default_metrics": "engine.observe.metrics",
    "Profile": "engine.observe.sampler",
    "Sampler": "engine.observe.sampler",
    "profile_for": "engine.observe.sampler",
    "ObserveServer": "engine.observe.server",
    "Tracer": "engine.observe.tracing",
    "current_traceparent": "engine.observe.tracing",
    "make_traceparent": "engine.observe.tracing",
    "parse_traceparent": "engine.observe.tracing",
}


__all__ = [
    "AuditLog",
    "Metrics",
    "ObserveServer",
    "Profile",
    "RedactingFilter",
    "Sampler",
    "Tracer",
    "configure_logging",
    "current_traceparent",
    "default_metrics",
    "log_context",
    "make_traceparent",
    "parse_traceparent",
    "profile_for",
]

__getattr__, __dir__ = lazy(__name__, _LAZY, __all__)
