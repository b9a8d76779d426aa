"""The mesh broker: a ZeroMQ ROUTER socket around :class:`~engine.mesh.broker_core.BrokerCore`.

This module is only the shell: one thread runs a batched loop — wait once, read up to
``batch`` messages with NOBLOCK, hand each to the core with the time, let the core tick,
then carry out the core's output: apply its store writes (one transaction, before
anything that depends on them leaves), then send its messages (one multipart message per
peer and kind, so under load many envelopes share one ZeroMQ send). A send that fails
for good tells the core the peer is unreachable. Every protocol decision — registration,
roles, routing, credit, redelivery, idempotency, dead letters — is the core's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import zmq

from engine.errors import AuditError
from engine.mesh._config import BrokerConfig
from engine.mesh._io import FrameIO, frame_socket
from engine.mesh._signing import Keys, as_keys
from engine.mesh._store import MemoryStore, open_store
from engine.mesh.broker_core import BrokerCore, Output
from engine.mesh.security import CurveServer
from engine.observe.audit import AuditLog
from engine.observe.tracing import HAS_OTEL, Tracer

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from engine.observe.server import ObserveServer

__all__ = ["Broker"]

log = logging.getLogger("engine.mesh.broker")

# ZeroMQ queues per connection, in messages (each at most max_frame bytes; a batch message
# holds up to 4096 envelopes). A peer that lets its send queue fill is dropped.
_HWM = 10_000


class Broker:
    """The ROUTER broker. ``run()`` blocks; ``start()`` runs it in a daemon thread.

    ``bind`` endpoint(s) (default 127.0.0.1 only), optional ``curve_dir`` (CURVE keys and
    the allow-list), ``store`` URL (``sqlite:///path`` or ``postgresql://...``, an
    :mod:`engine.store`), ``hmac_key`` (bytes, str, a list of keys — the first signs — or
    :class:`engine.mesh._signing.Keys`).

    Every other keyword is a :class:`~engine.mesh.BrokerConfig` field (``heartbeat``,
    ``max_attempts``, ``client_credit``, ``max_frame``, ``max_queued``,
    ``max_queued_bytes``, ``max_peer_bytes``, ``max_peers``, ``route_timeout``,
    ``startup_grace``, ``delivery_timeout``, ``policy``, ``batch``, ``client_rate``,
    ``tenant_weights``, ...), or pass ``config=``.

    ``metrics_port`` serves ``/metrics`` (``engine_*`` and ``engine_mesh_*``),
    ``/debug/profile`` and ``/healthz`` on ``metrics_host`` (127.0.0.1 unless told: the
    profile shows code paths) while the broker runs.

    ``audit`` (an :class:`~engine.observe.audit.AuditLog` or a path) receives a
    ``node.registered`` or ``node.rejected`` record per REGISTER; other frames cost nothing.
    ``tracer`` (or one made on ``tracer_provider``, else on the application's global
    OpenTelemetry provider when one is set) opens a ``hop`` span per forwarded envelope.
    """

    def __init__(
        self,
        bind: str | Iterable[str] = "tcp://127.0.0.1:5555",
        *,
        curve_dir: str | None = None,
        store: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        hmac_key: Keys | bytes | str | list[bytes] | None = None,
        tracer: Tracer | None = None,
        tracer_provider: TracerProvider | None = None,
        audit: AuditLog | str | os.PathLike[str] | None = None,
        config: BrokerConfig | None = None,
        **settings: Any,
    ) -> None:
        self.config = config if config is not None else BrokerConfig(**settings)
        if config is not None and settings:
            raise TypeError("pass either config= or BrokerConfig fields, not both")
        self.binds = [bind] if isinstance(bind, str) else list(bind)
        self.hmac = as_keys(hmac_key)
        self.curve = CurveServer.from_dir(curve_dir) if curve_dir else None
        self.broker_id = os.urandom(8).hex()
        self.tracer = _make_tracer(tracer, tracer_provider)
        self._own_audit = audit is not None and not isinstance(audit, AuditLog)
        self.audit: AuditLog | None = (
            audit if isinstance(audit, AuditLog) or audit is None else AuditLog(audit)
        )
        self.store: MemoryStore = open_store(store)
        if metrics_port is not None and (
            not isinstance(metrics_port, int)
            or isinstance(metrics_port, bool)
            or not 0 <= metrics_port <= 65535
        ):
            raise ValueError(f"metrics_port must be an int in [0, 65535], got {metrics_port!r}")
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.observe: ObserveServer | None = None  # the metrics endpoint while running
        self.core = BrokerCore(
            self.config,
            broker_id=self.broker_id,
            now=time.monotonic(),
            wall=time.time(),
            curve=self.curve is not None,
            keys=self.hmac,
            persist=store is not None,
            tracer=self.tracer,
            auditing=self.audit is not None,
        )
        self.endpoints: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._crashed: BaseException | None = None
        self.stats: dict[str, int] = self.core.stats  # received, delivered, malformed, ...

    # -- the settings, as the broker's own attributes (compatibility) -------------------

    @property
    def heartbeat(self) -> float:
        return self.config.heartbeat

    @property
    def max_queued(self) -> int:
        """The bound on messages held (BrokerConfig.max_queued)."""
        return self.config.max_queued

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread; returns once the sockets are bound."""
        self._thread = threading.Thread(target=self._run_thread, name="engine-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("broker did not start within 10 s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop (DISCONNECT SHUTDOWN to every peer) and wait ``timeout``."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the broker stopped (or ``timeout``); True once it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        """True while the broker's loop runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def crashed(self) -> BaseException | None:
        """The exception that ended the loop, None if it ended (or runs) normally."""
        return self._crashed

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            if exc is not self._error:  # a startup error is raised by start() instead
                self._crashed = exc
                log.critical("broker loop crashed", exc_info=exc)

    def run(self) -> None:
        """Bind and serve until :meth:`stop` (or SIGTERM/SIGINT in ``engine broker``)."""
        ctx: zmq.Context[Any] = zmq.Context()
        auth = None
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_frame)
            sock.setsockopt(zmq.SNDHWM, _HWM)
            sock.setsockopt(zmq.RCVHWM, _HWM)
            if self.curve is not None:
                auth = self.curve.apply(ctx, sock)
            for endpoint in self.binds:
                sock.bind(endpoint)
                self.endpoints.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            self._start_metrics()
            restored = self.core.restore(self.store.pending())
            if restored:
                log.info("restored %d pending messages from the store", restored)
        except BaseException as exc:
            self._stop_metrics()
            self._error = exc
            self._ready.set()
            sock.close(0)
            if auth is not None:
                auth.stop()
            ctx.term()
            raise
        self._ready.set()
        log.info("broker %s listening on %s", self.broker_id, ", ".join(self.endpoints))
        io = frame_socket(sock)
        try:
            self._loop(io)
        finally:
            try:
                self._carry_out(io, self.core.shutdown())
            finally:
                self.store.close()
                if self._own_audit and self.audit is not None:
                    self.audit.close()
                sock.close(0)
                if auth is not None:
                    auth.stop()
                ctx.term()
                self._stop_metrics()

    # -- the loop --------------------------------------------------------------------

    def _loop(self, io: FrameIO) -> None:
        core = self.core
        receive = core.receive
        curve = self.curve is not None
        tick = min(self.config.heartbeat, 0.05)
        next_tick = time.monotonic()
        batch = self.config.batch
        monotonic = time.monotonic
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - monotonic())
            # PERF: one compiled call takes every waiting message (benches/mesh_seq_profile.py)
            if io.wait(int(timeout * 1000) + 1):
                now = monotonic()
                if curve:
                    for msg, user_id in io.recv_many_meta(batch, "User-Id"):
                        receive(msg[0], msg[1:], now, user_id)
                else:
                    for msg in io.recv_many(batch):
                        receive(msg[0], msg[1:], now)
            now = monotonic()
            if now >= next_tick:
                core.tick(now, time.time())
                next_tick = now + tick
            self._carry_out(io, core.output())

    def _carry_out(self, io: FrameIO, out: Output) -> None:
        """Apply the core's output: store writes first, then the messages."""
        if out.writes:
            self.store.apply(out.writes)
        if out.audit:
            self._write_audit(out.audit)
        failed: bytes | None = None
        for ident, frames in out.messages:
            if ident == failed:
                continue
            if not self._send(io, ident, frames):
                failed = ident
                self.core.unreachable(ident, time.monotonic())

    def _send(self, io: FrameIO, ident: bytes, frames: list[bytes]) -> bool:
        try:
            if io.send(frames, ident):
                return True
        except zmq.Again:  # refused after the first part (not expected): as a full queue
            pass
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise
        log.warning("peer %s not reading (send queue full): dropping it", ident.hex())
        return False

    def _write_audit(self, records: list[tuple[str, dict[str, Any]]]) -> None:
        if self.audit is None:
            return
        for event, data in records:
            try:
                self.audit.append(event, data)
            except (AuditError, OSError) as exc:  # never let the audit file stop the broker
                log.error("audit record %s not written: %s", event, exc)

    # -- metrics ---------------------------------------------------------------------

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from engine.mesh._metrics import MeshCollector
        from engine.observe.instrument import serve
        from engine.observe.metrics import Metrics

        metrics = Metrics()
        metrics.registry.register(MeshCollector(self))
        self.observe = serve(self, self.metrics_port, host=self.metrics_host, metrics=metrics)

    def _stop_metrics(self) -> None:
        srv, self.observe = self.observe, None
        if srv is not None:
            srv.close()

    # -- introspection (tests, monitors) ---------------------------------------------

    @property
    def queued(self) -> int:
        """Messages held by the broker that no node has received yet."""
        return self.core.queued

    def peers(self) -> dict[str, dict[str, Any]]:
        """A snapshot of registered peers: role, types, window, in flight, queued."""
        return self.core.snapshot()


def _make_tracer(tracer: Tracer | None, provider: TracerProvider | None) -> Tracer | None:
    """The broker's tracer: ``tracer``, else one on ``provider``, else on the application's
    global provider when one is set (no spans, and no per-message cost, otherwise)."""
    if tracer is not None or not HAS_OTEL:
        return tracer
    if provider is None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            return None
    try:
        return Tracer("engine-broker", tracer_provider=provider)  # type: ignore[call-arg,unused-ignore]
    except TypeError:  # an engine.observe.tracing without tracer_provider=
        made = Tracer("engine-broker", enabled=False)
        made._tracer = provider.get_tracer("engine")
        return made
