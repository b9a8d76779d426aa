"""The observability HTTP endpoint shared by runtimes, brokers and nodes.

``ObserveServer(metrics, port=9100).start()`` serves, from a daemon thread:

* ``GET /metrics`` Prometheus text exposition of the engine's registry;
* ``GET /debug/profile?seconds=N[&hz=H][&format=speedscope|folded]`` samples the process
  for N seconds with :class:`engine.observe.sampler.Sampler` (speedscope JSON by default);
* ``GET /healthz`` liveness: ``ok`` whenever the process answers;
* ``GET /readyz`` readiness: 200 and ``ready`` when every check passes, else 503 with one
  line per check (``broker: broker silent for 2.1s ...``); see :mod:`engine.observe.health`.

It binds 127.0.0.1 unless told otherwise: profiles expose code paths, keep them private.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.observe.health import Check, run_checks
from engine.observe.metrics import Metrics, default_metrics
from engine.observe.sampler import MAX_HZ, MAX_SECONDS, profile_for

__all__ = ["ObserveServer"]


class _BadRequest(Exception):
    pass


def _number(query: dict[str, list[str]], name: str, default: float, hi: float) -> float:
    raw = query.get(name, [None])[-1]
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be a number, got {raw!r}") from None
    if not 0 < value <= hi:
        raise _BadRequest(f"{name} must be in (0, {hi:g}], got {raw!r}")
    return value


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, self.server.metrics.exposition())
            elif url.path == "/healthz":
                self._send(200, "text/plain; charset=utf-8", b"ok\n")
            elif url.path == "/readyz":
                self._ready()
            elif url.path == "/debug/profile":
                self._profile(parse_qs(url.query))
            else:
                self._send(404, "text/plain; charset=utf-8", f"no such path: {url.path}\n".encode())
        except _BadRequest as exc:
            self._send(400, "text/plain; charset=utf-8", f"{exc}\n".encode())

    def _ready(self) -> None:
        results = run_checks(dict(self.server.checks))
        lines = [f"{name}: {why or 'ok'}" for name, why in sorted(results.items())]
        failed = any(why is not None for why in results.values())
        head = "not ready" if failed else "ready"
        body = "\n".join([head, *lines]) + "\n"
        self._send(503 if failed else 200, "text/plain; charset=utf-8", body.encode())

    def _profile(self, query: dict[str, list[str]]) -> None:
        seconds = _number(query, "seconds", 10.0, self.server.max_profile_seconds)
        hz = _number(query, "hz", 100.0, MAX_HZ)
        fmt = query.get("format", ["speedscope"])[-1]
        if fmt not in ("speedscope", "folded"):
            raise _BadRequest(f"format must be 'speedscope' or 'folded', got {fmt!r}")
        with self.server.profile_lock:  # one profile at a time: they would sample each other
            profile = profile_for(seconds, hz)
        if fmt == "folded":
            self._send(200, "text/plain; charset=utf-8", profile.folded().encode())
        else:
            self._send(200, "application/json", orjson.dumps(profile.speedscope()))

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(HTTPStatus(code))
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: no stderr per request
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, addr: tuple[str, int], metrics: Metrics, max_seconds: float, checks: dict[str, Check]
    ) -> None:
        self.metrics = metrics
        self.checks = checks
        self.max_profile_seconds = max_seconds
        self.profile_lock = threading.Lock()
        super().__init__(addr, _Handler)


class ObserveServer:
    """``/metrics``, ``/debug/profile``, ``/healthz`` and ``/readyz`` on ``host:port`` (0 = any
    free port). ``checks`` (name -> check, see :mod:`engine.observe.health`) decide ``/readyz``;
    :meth:`add_check` adds one later."""

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_profile_seconds: float = 60.0,
        checks: Mapping[str, Check] | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port!r}")
        if not 0 < max_profile_seconds <= MAX_SECONDS:
            raise ValueError(f"max_profile_seconds must be in (0, {MAX_SECONDS:g}]")
        self.metrics = metrics if metrics is not None else default_metrics()
        self._addr = (host, port)
        self._max = max_profile_seconds
        self.checks: dict[str, Check] = dict(checks or {})
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def add_check(self, name: str, check: Check) -> None:
        """Make ``/readyz`` also depend on ``check`` (None when ready, else the reason)."""
        if not callable(check):
            raise TypeError(f"check {name!r} must be callable, got {type(check).__name__}")
        self.checks[name] = check

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._server is not None

    @property
    def url(self) -> str:
        return f"http://{self._addr[0]}:{self.port}"

    def start(self) -> ObserveServer:
        if self._server is not None:
            raise RuntimeError("server already started")
        try:
            self._server = _Server(self._addr, self.metrics, self._max, self.checks)
        except OSError as exc:
            host, port = self._addr
            msg = f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            raise OSError(exc.errno, msg) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="engine-observe-http", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ObserveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
