"""Observability: metrics, tracing, structured logs, the audit log and the sampling profiler."""

from __future__ import annotations

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
