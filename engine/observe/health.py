"""Readiness checks behind ``/readyz`` (``/healthz`` is liveness: the process answers).

A check is a function returning ``None`` when its part is ready, or a short reason when it
is not (an exception counts as not ready, its text the reason). Checks run in the HTTP
server's thread at probe time, so they only read state the owner keeps anyway (sizes,
timestamps) or open their own connection; none runs per message.

What each component reports (see docs/operations/README.md):

- a runtime: ``mailboxes`` (no agent's mailbox at its bound) and, with a mesh transport,
  ``broker`` (heard from within three heartbeats);
- a broker: ``loop`` (its thread runs), ``queue`` (messages held below ``max_queued``),
  ``store`` (its SQLite file, or its PostgreSQL server, accepts a write transaction);
- a node: ``broker`` (heard from within three heartbeats).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "Check",
    "broker_checks",
    "node_checks",
    "peer_reachable",
    "postgres_writable",
    "run_checks",
    "runtime_checks",
    "sqlite_writable",
]

Check = Callable[[], str | None]


def run_checks(checks: Mapping[str, Check]) -> dict[str, str | None]:
    """Run every check; name -> None (ready) or why not."""
    out: dict[str, str | None] = {}
    for name, check in checks.items():
        try:
            out[name] = check()
        except Exception as exc:  # a broken check means "not ready", never a 500
            out[name] = f"check failed: {type(exc).__name__}: {exc}"
    return out


def peer_reachable(peer: Any) -> str | None:
    """A mesh peer (node, client, runtime transport) has heard from its broker lately
    (:attr:`engine.mesh.MeshPeer.broker_reachable`: registered, and heard from within three
    heartbeats); why not, from its :class:`~engine.mesh.PeerCore`."""
    if peer.broker_reachable:
        return None
    core = peer.core
    if not core.last_heard:
        return "broker unreachable: never heard from it"
    silent = time.monotonic() - core.last_heard
    state = "registered" if core.registered else "not registered"
    return f"broker unreachable: {state}, silent for {silent:.1f}s (heartbeat {core.heartbeat:g}s)"


def sqlite_writable(path: str) -> str | None:
    """``path`` accepts a write transaction (taken and rolled back: nothing changes)."""
    try:
        db = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    except sqlite3.Error as exc:
        return f"store {path}: {exc}"
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return f"store {path} is not writable: {exc}"
    finally:
        db.close()
    return None


def postgres_writable(url: str, *, timeout: float = 2.0) -> str | None:
    """The PostgreSQL server at ``url`` answers within ``timeout`` seconds and accepts a
    write transaction (begun and rolled back on a connection of its own: nothing changes).
    The reason names the server with any password masked."""
    import psycopg

    from engine.store._url import mask, parse_url

    where = mask(url)
    try:
        conninfo = parse_url(url).target
        with psycopg.connect(conninfo, connect_timeout=max(1, round(timeout)),
                             autocommit=True) as conn:  # fmt: skip
            conn.execute("BEGIN READ WRITE")  # a read-only standby refuses this
            conn.execute("ROLLBACK")
    except psycopg.Error as exc:
        lines = str(exc).strip().splitlines()
        return f"store {where} is not writable: {lines[0] if lines else type(exc).__name__}"
    return None


def runtime_checks(rt: Any) -> dict[str, Check]:
    """Checks of an in-process :class:`engine.Runtime`."""

    def mailboxes() -> str | None:
        full = [str(aid) for aid in rt.full_mailboxes()]
        if full:
            return f"{len(full)} mailboxes full: {', '.join(full[:5])}"
        return None

    checks: dict[str, Check] = {"mailboxes": mailboxes}
    peer = getattr(rt.transport, "peer", None)
    if peer is not None:
        checks["broker"] = lambda: peer_reachable(peer)
    return checks


def broker_checks(broker: Any) -> dict[str, Check]:
    """Checks of a mesh :class:`~engine.mesh.Broker`."""

    def loop() -> str | None:
        return None if broker.running else "broker loop not running"

    def queue() -> str | None:
        held, bound = broker.queued, broker.max_queued
        return None if held < bound else f"queue at its bound ({held}/{bound} messages)"

    checks: dict[str, Check] = {"loop": loop, "queue": queue}
    path = broker.store.path  # the SQLite file, None for an in-memory or PostgreSQL store
    url = getattr(broker.store, "url", "")
    if path is not None:
        checks["store"] = lambda: sqlite_writable(str(path))
    elif url.startswith(("postgresql", "postgres")):
        checks["store"] = lambda: postgres_writable(url)
    return checks


def node_checks(node: Any) -> dict[str, Check]:
    """Checks of a mesh node (a :class:`~engine.mesh.MeshPeer` hosting agents)."""
    return {"broker": lambda: peer_reachable(node)}
