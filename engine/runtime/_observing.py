"""Metrics and the HTTP endpoint of a runtime (``Runtime(metrics=..., metrics_port=...)``).

Imported only when a runtime is made with either: prometheus-client loads with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.observe.metrics import Metrics
    from engine.observe.server import ObserveServer

__all__ = ["instrument"]


def instrument(
    rt: Any, metrics: Metrics | None, port: int | None
) -> tuple[Metrics, ObserveServer | None]:
    """Attach ``metrics`` (read on scrape only) to ``rt``; the endpoint for ``port``."""
    from engine.observe.health import runtime_checks
    from engine.observe.instrument import instrument_runtime
    from engine.observe.metrics import Metrics
    from engine.observe.server import ObserveServer

    if metrics is not None and not isinstance(metrics, Metrics):
        raise TypeError(f"metrics must be an engine.observe.Metrics, got {metrics!r}")
    metrics = metrics if metrics is not None else Metrics()
    server = None
    if port is not None:
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"metrics_port must be an int, got {port!r}")
        server = ObserveServer(metrics, port=port, checks=runtime_checks(rt))  # ValueError: range
    return instrument_runtime(rt, metrics, derive_replies=True), server
